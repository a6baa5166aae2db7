"""Floor 6: the released zoo (load, keras_model), model cards, the zoo's Pareto front, float weights derived from INT8 files.

See docs/layout.md for the floors and the import rules (tests/test_layout.py)."""
