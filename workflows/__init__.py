"""Temporal workflows. Deterministic code only: no I/O, no clients, activity references only."""
