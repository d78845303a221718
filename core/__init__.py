"""Shared pieces: configuration, contracts, errors, ids, events. Imports nothing else of the project."""
