"""Floor 1: datasets (folders, archives, tfds, the cache) and the augmented epochs.

See docs/layout.md for the floors and the import rules (tests/test_layout.py)."""
