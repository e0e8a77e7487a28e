"""Agent types and the runtime that plans, executes steps and writes a result."""
