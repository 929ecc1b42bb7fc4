"""Cells of markdown table rows, so tests assert what a report says, not how tabulate pads it."""

from __future__ import annotations

import re

SEPARATOR = re.compile(r"^\|[\s:|-]+\|$")


def table_rows(text: str) -> list[list[str]]:
    """Every markdown table row in ``text`` (headers included, separator lines not), cells stripped."""
    lines = (line.strip() for line in text.splitlines())
    return [[cell.strip() for cell in line[1:-1].split("|")] for line in lines
            if line.startswith("|") and line.endswith("|") and not SEPARATOR.match(line)]


def row_starting(text: str, *cells: str) -> list[str]:
    """The first table row whose leading cells are ``cells``; fails the test if there is none."""
    for row in table_rows(text):
        if row[:len(cells)] == list(cells):
            return row
    raise AssertionError(f"no table row starts with {cells!r} in:\n{text}")
