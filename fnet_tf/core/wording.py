"""Printed words that depend on a number."""


def count(n, noun):
    """``1 epoch``, ``3 epochs``: a count with its noun in the right number (regular plurals)."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
