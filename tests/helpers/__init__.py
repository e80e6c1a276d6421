"""Helpers shared by the test suites (multi-process launches, ...)."""
