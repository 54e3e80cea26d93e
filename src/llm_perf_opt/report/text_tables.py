"""Small tables for a person, as Markdown or as a rich table; every report and summary uses them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.table import Table


def md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (a `|` in a cell is escaped)."""

    def cell(value: str) -> str:
        return value.replace("|", "\\|")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def rich_table(
    title: str, head: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1
) -> Table:
    """A rich table whose first `left` columns are left-justified, the others right; no cell
    wraps."""
    table = Table(title=title, title_justify="left", title_style="bold")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i < left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table
