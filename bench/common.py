"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``)."""

import sys


def table(title, header, rows):
    """Prints a Markdown table under a ``###`` title."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()
