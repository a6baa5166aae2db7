"""Floor 1: architectures as data (spec, layers, grouped convs), the model registry and the factorization schedule.

See docs/layout.md for the floors and the import rules (tests/test_layout.py)."""
