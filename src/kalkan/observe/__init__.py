"""What the newsroom sees: access log, metrics and the admin listener."""
