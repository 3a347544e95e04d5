"""Tasks and the worker runtime."""
