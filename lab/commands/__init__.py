"""`edgeloop` sub-commands that need the simulator (registered as entry points)."""
