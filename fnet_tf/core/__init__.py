"""Floor 0: errors, atomic file I/O, the one Keras import point, child processes, the commands' shared runner.

See docs/layout.md for the floors and the import rules (tests/test_layout.py)."""
