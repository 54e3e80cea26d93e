"""Small Markdown tables for a person; every Markdown report and summary uses them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (a `|` in a cell is escaped)."""

    def cell(value: str) -> str:
        return value.replace("|", "\\|")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
