"""The PostgreSQL session: the per-connection state machine and what it uses."""
