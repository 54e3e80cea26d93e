"""How a level of an `MfuReport` (a stage, an instance, a decode step, …) is flattened.

A `Field` declares one value of a level once: its name in JSON, CSV and the results database,
its polars type, where it is read and in which unit it is written, and which outputs write it. A
`Level` turns its items into a frame with that schema, and every output selects its columns from
the frame instead of spelling a field list of its own. A `Column` is the same for the tables a
person reads: a header and the text of a cell.

Units are converted in Python while the frame is built, not by polars: polars divides a column
by a scalar as a product with the reciprocal, which differs in the last bit from the division
the numbers of a report have always been made with.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

import polars as pl

Output = Literal["json", "csv", "db"]
JSON: Final = "json"
CSV: Final = "csv"
DB: Final = "db"
EVERYWHERE: Final[frozenset[Output]] = frozenset({JSON, CSV, DB})
NOWHERE: Final[frozenset[Output]] = frozenset()


@dataclass(frozen=True)
class Field:
    """One value of a level's row.

    `name` is its key in JSON, CSV and the results database; `dtype` its polars type as written.
    The raw value is `get(item)`, else the item's attribute `attr` (default: `name`), and it is
    written divided by `per` (ns → s: 1e9). `outputs` are the outputs that write it, of those
    that write its level (an empty set: read only for a table a person reads, or as a key).
    `whole`: a count JSON writes as an integer when whole (a median may fall between two).
    """

    name: str
    dtype: pl.DataType
    attr: str | None = None
    get: Callable[[Any], Any] | None = None
    per: float | None = None
    outputs: frozenset[Output] = EVERYWHERE
    whole: bool = False

    def raw(self, item: Any) -> Any:
        """The value as the item holds it, before any unit conversion."""
        if self.get is not None:
            return self.get(item)
        return operator.attrgetter(self.attr or self.name)(item)

    def value(self, item: Any) -> Any:
        """The value as it is written."""
        raw = self.raw(item)
        return raw if self.per is None or raw is None else raw / self.per

    def only(self, *outputs: Output) -> Field:
        """The same field, written only by `outputs`."""
        return replace(self, outputs=frozenset(outputs))


@dataclass(frozen=True)
class Level:
    """One row per item: a stage, an instance, a decode step, a kernel, ….

    `name` is the level's name where an output tells levels apart (the CSV's `level` column)."""

    name: str
    fields: tuple[Field, ...]

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema({f.name: f.dtype for f in self.fields})

    def names(self, output: Output) -> tuple[str, ...]:
        """The columns `output` writes, in order."""
        return names(self.fields, output)

    def frame(self, items: Iterable[Any], **given: Any) -> pl.DataFrame:
        """The items as a frame of `schema`; `given` supplies the values of fields the items do
        not hold (a sequence, or one value for every row)."""
        items = list(items)
        columns = {}
        for f in self.fields:
            if f.name in given:
                value = given[f.name]
                columns[f.name] = list(value) if _is_sequence(value) else [value] * len(items)
            else:
                columns[f.name] = [f.value(item) for item in items]
        return pl.DataFrame(columns, schema=self.schema)

    def rows(self, frame: pl.DataFrame, output: Output) -> list[dict[str, Any]]:
        """The frame's rows as `output` writes them."""
        return [pick(row, self.fields, output) for row in frame.to_dicts()]


def names(fields: Iterable[Field], output: Output) -> tuple[str, ...]:
    return tuple(f.name for f in fields if output in f.outputs)


def pick(row: Mapping[str, Any], fields: Iterable[Field], output: Output = JSON) -> dict[str, Any]:
    """The values of `fields` that `output` writes, from a row of a level's frame."""
    return {f.name: _whole(row[f.name]) if f.whole else row[f.name]
            for f in fields if output in f.outputs}  # fmt: skip


def union(*levels: Sequence[str]) -> tuple[str, ...]:
    """The columns of several levels in one order: each name a level adds stands right after
    the name it follows in that level."""
    out: list[str] = []
    for level in levels:
        for before, name in zip((None, *level), level, strict=False):
            if name not in out:
                out.insert(0 if before is None else out.index(before) + 1, name)
    return tuple(out)


@dataclass(frozen=True)
class Column:
    """A column of a table a person reads: its header and the text of the cell of an item."""

    label: str
    cell: Callable[[Any], str]


def shown(label: str, field: Field, fmt: Callable[[Any], str]) -> Column:
    """A column showing one field: `fmt` of its raw value (ns stay ns: `fmt` picks the unit)."""
    return Column(label, lambda item: fmt(field.raw(item)))


def head(columns: Sequence[Column]) -> tuple[str, ...]:
    return tuple(c.label for c in columns)


def cells(
    columns: Sequence[Column], items: Iterable[Any], under: Sequence[str] | None = None
) -> list[tuple[str, ...]]:
    """One row of text per item; `under` (the header of another table) places each cell under
    its label and leaves the columns `columns` lacks empty."""
    if under is None:
        return [tuple(c.cell(item) for c in columns) for item in items]
    by_label = {c.label: c for c in columns}
    return [
        tuple(by_label[label].cell(item) if label in by_label else "" for label in under)
        for item in items
    ]


def _whole(x: float | None) -> float | int | None:
    return int(x) if x is not None and float(x).is_integer() else x


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)
