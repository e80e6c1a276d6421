"""Trackers: one module per backend; importing one never imports another."""
