#!/usr/bin/env python3
"""Regenerate the README's zoo table from the released models' metrics.json (never by hand).

    python tools/readme_table.py          # rewrites the block between the zoo-table markers
    python tools/readme_table.py --check  # exit 1 if the README's table is out of date
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fnet_tf.release import zoo
from fnet_tf.core import fileio  # noqa: E402

BEGIN, END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"


def render(readme):
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"error: README.md lacks the {BEGIN} ... {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{zoo.table_markdown()}\n{END}{tail}"


def main(argv):
    path = os.path.join(REPO, "README.md")
    with open(path) as f:
        current = f.read()
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print("README.md's zoo table is out of date: run python tools/readme_table.py",
                  file=sys.stderr)
            return 1
        return 0
    fileio.write_text(path, wanted)
    print(f"README.md: zoo table of {len(zoo.names())} models")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
