"""Schemas and versioned, atomic reads and writes of stage outputs."""
