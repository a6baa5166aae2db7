"""Floor 7: the design space, the latency model, recipe grids and the sweep report.

See docs/layout.md for the floors and the import rules (tests/test_layout.py)."""
