"""Floor 4: the training loop and LR schedule, recipes, distillation, the logit bank, GradBoost, lookahead, fine-tuning, distribution.

See docs/layout.md for the floors and the import rules (tests/test_layout.py)."""
