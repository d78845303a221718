"""Temporal activities: everything that does I/O for a turn."""
