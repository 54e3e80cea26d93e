"""Plain-SQL readings of a generated trace, written apart from the generator to check it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

PROCESS_MASK = 0xFFFFFFFFFF000000  # globalTid -> globalPid (write it in hex in SQL: 64-bit)


def connect(path: Path) -> sqlite3.Connection:
    """Open a trace read-only, as the analysis does."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


@dataclass
class Range:
    """One NVTX range with its resolved name and domain and its place in the thread's stack."""

    row: int
    name: str
    domain: str
    event_type: int
    start: int
    end: int
    gtid: int
    payload: int | None
    text_id: int | None
    parent: Range | None = None
    children: list[Range] = field(default_factory=list)

    def path(self) -> str:
        """Names from the root, `/`-joined."""
        return self.name if self.parent is None else f"{self.parent.path()}/{self.name}"


def ranges(con: sqlite3.Connection) -> list[Range]:
    """Push/pop and start/end ranges, names from `text` or `StringIds`, domains per process."""
    domains = {
        (gtid & PROCESS_MASK, domain_id): text
        for gtid, domain_id, text in con.execute(
            "SELECT globalTid, domainId, text FROM NVTX_EVENTS WHERE eventType = 75"
        )
    }
    rows = con.execute(
        "SELECT e.rowid, coalesce(e.text, s.value), e.domainId, e.eventType, e.start, e.end, "
        "e.globalTid, e.int64Value, e.textId FROM NVTX_EVENTS e "
        "LEFT JOIN StringIds s ON s.id = e.textId WHERE e.eventType IN (59, 60, 70, 71)"
    ).fetchall()
    found = [
        Range(row, name, domains.get((gtid & PROCESS_MASK, dom), ""), et, s, e, gtid, pay, tid)
        for row, name, dom, et, s, e, gtid, pay, tid in rows
    ]
    _nest(found)
    return found


def _nest(found: list[Range]) -> None:
    """Set parents by containment on each thread; fail on ranges that cross instead of nest."""
    by_thread: dict[int, list[Range]] = {}
    for r in found:
        by_thread.setdefault(r.gtid, []).append(r)
    for thread in by_thread.values():
        stack: list[Range] = []
        for r in sorted(thread, key=lambda r: (r.start, -r.end)):
            while stack and stack[-1].end <= r.start:
                stack.pop()
            if stack:
                assert r.end <= stack[-1].end, f"range {r.row} crosses range {stack[-1].row}"
                r.parent = stack[-1]
                stack[-1].children.append(r)
            stack.append(r)


@dataclass(frozen=True)
class Op:
    """A GPU op joined to the API call that launched it."""

    table: str
    start: int
    end: int
    stream: int
    correlation: int
    graph_node: int | None
    name: str
    api: str
    api_start: int
    api_end: int
    gtid: int


def ops(con: sqlite3.Connection) -> list[Op]:
    """Kernels, memcpys and memsets with their launch call (joined on process + correlation)."""
    found: list[Op] = []
    for table, name in (
        ("CUPTI_ACTIVITY_KIND_KERNEL", "kn.value"),
        ("CUPTI_ACTIVITY_KIND_MEMCPY", "'[memcpy]'"),
        ("CUPTI_ACTIVITY_KIND_MEMSET", "'[memset]'"),
    ):
        kernel = table.endswith("KERNEL")
        node = "o.graphNodeId"
        join = "JOIN StringIds kn ON kn.id = o.demangledName" if kernel else ""
        query = (
            f"SELECT o.start, o.end, o.streamId, o.correlationId, {node}, {name}, an.value, "
            f"r.start, r.end, r.globalTid FROM {table} o {join} "
            "JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = o.correlationId "
            f"AND (r.globalTid & {PROCESS_MASK:#x}) = o.globalPid "
            "JOIN StringIds an ON an.id = r.nameId"
        )
        found += [Op(table, *row) for row in con.execute(query)]
    return found


def innermost(range_list: list[Range], op: Op) -> Range | None:
    """The innermost range on the op's launching thread that contains the launch call."""
    best: Range | None = None
    for r in range_list:
        inside = r.gtid == op.gtid and r.start <= op.api_start and op.api_end <= r.end
        if inside and (best is None or r.start >= best.start):
            best = r
    return best
