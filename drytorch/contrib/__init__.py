"""Integrations with other libraries; each module imports its own."""
