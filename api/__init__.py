"""The thin HTTP layer: validates, writes rows, starts/signals workflows, serves events."""
