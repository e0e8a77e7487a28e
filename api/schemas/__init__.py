"""How tasks, runs and accounts look on the wire (camelCase, ISO 8601 UTC with Z)."""
