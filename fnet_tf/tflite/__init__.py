"""Floor 3: verified full-integer conversion and measuring .tflite files (accuracy, latency, graph statistics).

See docs/layout.md for the floors and the import rules (tests/test_layout.py)."""
