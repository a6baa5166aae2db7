"""Floor 3: the run directory, checkpoints, loading a run's or a user's model (inspected first), portable weights.

See docs/layout.md for the floors and the import rules (tests/test_layout.py)."""
