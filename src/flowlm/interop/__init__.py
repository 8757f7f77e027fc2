"""Interoperability: reading checkpoints written by other code (the reference implementation)."""
