"""`assistant chat`: an interactive terminal client of the public HTTP API (API.md)."""
