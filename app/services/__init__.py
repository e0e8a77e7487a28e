"""Use cases: each module owns the rules of one area."""
