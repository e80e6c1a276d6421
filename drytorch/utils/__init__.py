"""Helpers with no knowledge of runs (e.g. local experiment data ops)."""
