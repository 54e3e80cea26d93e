"""The totals of the attribution fold: released ops attributed by the rule (`rule`), summed
per range, kind, reason, group of ranges and host/GPU window."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Final

import numpy as np
import polars as pl

from llm_perf_opt.attribution.calls import INT64_MAX, LaunchCalls
from llm_perf_opt.attribution.intervals import chunk_bounds, sorted_by
from llm_perf_opt.attribution.nesting import innermost_containing, selected_chain
from llm_perf_opt.attribution.rule import ATTRIBUTED_BY, UNATTRIBUTED_REASON, launch_slices
from llm_perf_opt.attribution.schemas import (
    DEVICE_OPS_SCHEMA,
    GROUPS_SCHEMA,
    KIND_OPS_SCHEMA,
    LAUNCH_KINDS_SCHEMA,
    OP_ASSIGNMENT_SCHEMA,
    REASONS,
    STEP_KERNELS_SCHEMA,
    TOP_KERNELS_SCHEMA,
    TRACE_KERNELS_SCHEMA,
    UNATTRIBUTED_SCHEMA,
    StreamBudget,
)
from llm_perf_opt.attribution.sweep import RangeTotals, WindowTotals
from llm_perf_opt.trace import OP_KINDS, process_key

KINDS: Final = tuple(OP_KINDS.categories.to_list())
KERNEL: Final = KINDS.index("kernel")
GRAPH: Final = KINDS.index("graph")


@dataclass(frozen=True)
class StreamStats:
    """How the pass went: rows seen, and the most held at once (what the budget bounds)."""

    op_rows: int
    call_rows_live_max: int
    calls_evicted: int
    waiting_ops_max: int


@dataclass(frozen=True)
class StreamResult:
    """What a fold returns: `ranges` (`rule.RANGES_SCHEMA`), and the small frames the report
    asks of the ops instead of the per-op frame (schemas in `attribution.schemas`)."""

    ranges: pl.DataFrame
    unattributed: pl.DataFrame
    launch_kinds: pl.DataFrame
    top_kernels: pl.DataFrame
    devices: pl.DataFrame
    op_kinds: pl.DataFrame
    gpu_windows: pl.DataFrame | None
    gpu_groups: pl.DataFrame | None
    step_kernels: pl.DataFrame
    stats: StreamStats
    # every op, attributed or not: count and time per kernel name, graph or copy/memset kind
    # (`TRACE_KERNELS_SCHEMA`), and the union of all op intervals per device, summed
    trace_kernels: pl.DataFrame
    trace_busy_ns: int
    # each op's assignment (`OP_ASSIGNMENT_SCHEMA`), in start order, when asked (`keep_ops`)
    ops: pl.DataFrame | None = None


class Totals:
    """Everything summed over the attributed ops: per range, kind, reason, group and window."""

    def __init__(
        self,
        ranges: pl.DataFrame,
        budget: StreamBudget,
        other_threads: bool,
        groups: pl.DataFrame | None,
        windows: pl.DataFrame | None,
        *,
        keep_ops: bool = False,
    ) -> None:
        self.ranges = ranges
        self.max_pairs = budget.pair_rows
        n = ranges.height
        ids = ranges["range_id"].to_numpy()
        self.pos_of = _index_of(ids)
        parent = ranges["parent_id"].fill_null(-1).to_numpy()
        self.parent_pos = np.where(parent >= 0, self.pos_of[np.maximum(parent, 0)], -1)
        self.r_start = ranges["start_ns"].to_numpy()
        self.r_end = ranges["end_ns"].to_numpy()
        self.bounds = ranges.select("global_tid", "start_ns", "end_ns")
        self.chain = selected_chain(ranges)
        self.pid_chain = (
            self.chain.with_columns(global_pid=process_key(pl.col("global_tid")))
            if other_threads
            else None
        )
        # exclusive totals only for the selected ranges (slots), the only ones that take ops
        self.slot_ids = ranges.filter("selected")["range_id"].to_numpy()
        self.slot_of = _index_of(self.slot_ids)
        m = self.slot_ids.size
        self.inclusive = RangeTotals(n, spans=True)
        self.exclusive = RangeTotals(m, spans=False)
        self.n_kernels = np.zeros(m, dtype=np.int64)
        self.n_graph_ops = np.zeros(m, dtype=np.int64)
        self.graph_sum_ns = np.zeros(m, dtype=np.int64)
        self.reason_ops = np.zeros(len(REASONS), dtype=np.int64)
        self.reason_kernel_ns = np.zeros(len(REASONS), dtype=np.int64)
        self.reason_duration_ns = np.zeros(len(REASONS), dtype=np.int64)
        self.kind_ops = np.zeros(len(KINDS), dtype=np.int64)
        self.device_ops: dict[int, int] = {}
        self.group_names, self.group_of = self._groups(groups)
        self.top: list[pl.DataFrame] = []
        self.step_top: list[pl.DataFrame] = []  # `group`: a decode-step window id
        self.windows = WindowTotals(windows, budget.latency_rows) if windows is not None else None
        self.assigned: list[pl.DataFrame] | None = [] if keep_ops else None
        self.whole_trace = RangeTotals(1, spans=False)
        self.trace_top: list[pl.DataFrame] = []

    def _groups(self, groups: pl.DataFrame | None) -> tuple[list[str], np.ndarray]:
        """Group names and each slot's group code (-1: none)."""
        group_of = np.full(self.slot_ids.size, -1, dtype=np.int64)
        if groups is None or groups.is_empty():
            return [], group_of
        groups = groups.select(GROUPS_SCHEMA.names()).cast(dict(GROUPS_SCHEMA))  # type: ignore[arg-type]
        if groups["range_id"].is_duplicated().any():
            raise ValueError("a range belongs to one group of top kernels at most")
        names, codes = np.unique(groups["group"].to_numpy().astype(str), return_inverse=True)
        slot = _lookup_ids(self.slot_of, groups["range_id"].to_numpy())
        group_of[slot[slot >= 0]] = codes[slot >= 0]
        return names.tolist(), group_of

    def add(self, ready: pl.DataFrame, calls: LaunchCalls) -> None:
        """Attribute released ops (in start order) and add them to every total."""
        first = calls.first_of_launch(ready["call"].to_numpy())
        launched = ready.with_columns(first_of_launch=pl.Series(first))
        self._whole_trace(launched)  # still in start order: the busy union needs no sort
        tid, ns = (launched[c].fill_null(INT64_MAX).to_numpy() for c in ("launch_tid", "launch_ns"))
        if not sorted_by(tid, ns, launched["op_id"].to_numpy()):  # one stream: in launch order
            launched = launched.sort("launch_tid", "launch_ns", "op_id", nulls_last=True)
        launch = launched["launch_ns"]
        active = np.zeros(0, dtype=np.int64)
        if launch.null_count() < launched.height:
            t_min, t_max = int(launch.min()), int(launch.max())  # type: ignore[arg-type]
            active = np.flatnonzero((self.r_start <= t_max) & (self.r_end >= t_min))
        lo, hi, has_own = launch_slices(_rows(self.bounds, active), launched)
        own = innermost_containing(
            self.chain, launched.select(q_by="launch_tid", t="launch_ns"), "global_tid"
        )
        excl_id = own.fill_null(-1).to_numpy()
        guessed = np.full(launched.height, -1, dtype=np.int64)
        if self.pid_chain is not None:
            queries = launched.select(
                q_by=pl.when(~has_own).then(pl.col("global_pid")), t="launch_ns"
            )
            guessed_id = innermost_containing(self.pid_chain, queries, "global_pid")
            guessed = _lookup_ids(self.pos_of, guessed_id.fill_null(-1).to_numpy())
            excl_id = np.where(excl_id >= 0, excl_id, guessed_id.fill_null(-1).to_numpy())
        excl = _lookup_ids(self.slot_of, excl_id)
        op = _OpColumns(launched)
        # why an op has no range (an index of `REASONS`), read where it has none
        reason = np.where(~op.has_launch, 0, np.where(~has_own.to_numpy(), 1, 2))
        if self.assigned is not None:
            self.assigned.append(_assignment(launched, own, excl_id, reason))
        self._inclusive(op, active, lo, hi, guessed)
        rows = np.flatnonzero(excl >= 0)
        self.exclusive.add(excl[rows], *op.stats(rows))
        self._kinds_and_reasons(op, excl, reason)
        self._top_kernels(launched, op, excl)
        if self.windows is not None:
            pos, win = self.windows.add(
                self.slot_ids[excl[rows]], op.launch[rows], op.dev[rows], op.start[rows],
                op.end[rows], op.op_id[rows],
            )  # fmt: skip
            self._step_kernels(launched, op, rows[pos], win)

    def _inclusive(
        self, op: _OpColumns, active: np.ndarray, lo: np.ndarray, hi: np.ndarray,
        guessed: np.ndarray,
    ) -> None:  # fmt: skip
        """Every (range, op) pair: the containing ranges on the launching thread, and for ops
        given to another thread's range, that range and its ancestors."""
        lengths = hi - lo
        offsets = np.cumsum(lengths) - lengths
        total = int(lengths.sum())
        pos = np.repeat(active, lengths)
        member = np.arange(total, dtype=np.int64) - np.repeat(offsets - lo, lengths)
        rows = np.flatnonzero(guessed >= 0)
        if rows.size:
            extra_pos, extra_op = [], []
            up = guessed[rows]
            while rows.size:
                extra_pos.append(up)
                extra_op.append(rows)
                up = self.parent_pos[up]
                rows, up = rows[up >= 0], up[up >= 0]
            pos = np.concatenate([pos, *extra_pos])
            member = np.concatenate([member, *extra_op])
            order = np.argsort(pos, kind="stable")
            pos, member = pos[order], member[order]
        # one range's pairs in one call, so its ops stay in start order
        heads = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]]) if pos.size else pos
        sizes = np.diff(np.r_[heads, pos.size])
        cuts = [int(heads[i]) if i < heads.size else pos.size
                for i in chunk_bounds(sizes, self.max_pairs)]  # fmt: skip
        for a, b in itertools.pairwise(cuts):
            self.inclusive.add(pos[a:b], *op.stats(member[a:b]))

    def _whole_trace(self, ops: pl.DataFrame) -> None:
        """Every op, attributed or not, in start order: the busy union per device and the
        count and time per kernel name, graph or copy/memset kind."""
        dev, start, end = (ops[c].to_numpy() for c in ("device_id", "start_ns", "end_ns"))
        kernel = (ops["kind"] == "kernel").to_numpy()
        everywhere = np.zeros(ops.height, dtype=np.int64)
        self.whole_trace.add(everywhere, dev, start, end, kernel, ops["first_of_launch"].to_numpy())
        self.trace_top = _folded(self.trace_top, _per_kernel(ops, everywhere))

    def _kinds_and_reasons(self, op: _OpColumns, excl: np.ndarray, reason: np.ndarray) -> None:
        """Ops per kind, kernels and graph executions per slot, ops per device, free ops per
        reason."""
        np.add.at(self.kind_ops, op.kind, 1)
        mine = excl >= 0
        kernels = mine & op.kernel
        graphs = mine & (op.kind == GRAPH)
        np.add.at(self.n_kernels, excl[kernels], 1)
        np.add.at(self.n_graph_ops, excl[graphs], 1)
        np.add.at(self.graph_sum_ns, excl[graphs], (op.end - op.start)[graphs])
        devices, counts = np.unique(op.dev[mine], return_counts=True)
        for d, c in zip(devices.tolist(), counts.tolist(), strict=True):
            self.device_ops[d] = self.device_ops.get(d, 0) + c
        free = ~mine
        duration = op.end - op.start
        np.add.at(self.reason_ops, reason[free], 1)
        np.add.at(self.reason_kernel_ns, reason[free], np.where(op.kernel, duration, 0)[free])
        np.add.at(self.reason_duration_ns, reason[free], duration[free])

    def _top_kernels(self, launched: pl.DataFrame, op: _OpColumns, excl: np.ndarray) -> None:
        """Count and time per (group, kernel name or graph) of the groups' exclusive ops."""
        if not self.group_names:
            return
        group = np.where(excl >= 0, self.group_of[np.maximum(excl, 0)], -1)
        wanted = (group >= 0) & (op.kernel | (op.kind == GRAPH))
        if not wanted.any():
            return
        self.top = _folded(self.top, _per_kernel(launched.filter(pl.Series(wanted)), group[wanted]))

    def _step_kernels(
        self, launched: pl.DataFrame, op: _OpColumns, member: np.ndarray, win: np.ndarray
    ) -> None:
        """Count and time per (decode-step window, kernel name or graph) of the windows' ops:
        the kernel entries of one window's ops, as `_top_kernels` sums a group's."""
        assert self.windows is not None
        wanted = self.windows.is_step[win] & (op.kernel | (op.kind == GRAPH))[member]
        if not wanted.any():
            return
        rows = launched[member[wanted]]
        self.step_top = _folded(self.step_top, _per_kernel(rows, self.windows.ids[win[wanted]]))

    def settle(self, launch_floor: int) -> None:
        """Close the windows no op launched from now on can enter."""
        if self.windows is not None:
            self.windows.settle(launch_floor)

    def result(self, stats: StreamStats) -> StreamResult:
        """Every total as the frames of `StreamResult`."""
        slots = self.pos_of[self.slot_ids]
        exclusive = [
            pl.Series(c.name, _scatter(self.ranges.height, slots, c.to_numpy()))
            for c in self.exclusive.frame("excl_").get_columns()
        ]
        ranges = self.ranges.with_columns(self.inclusive.frame("").get_columns() + exclusive)
        present = np.flatnonzero(self.reason_ops > 0)
        unattributed = pl.DataFrame(
            {
                "reason": [REASONS[i] for i in present],
                "n_gpu_ops": self.reason_ops[present],
                "kernel_sum_ns": self.reason_kernel_ns[present],
                "duration_sum_ns": self.reason_duration_ns[present],
            }
        ).cast(dict(UNATTRIBUTED_SCHEMA))  # type: ignore[arg-type]
        unattributed = unattributed.sort("reason")
        counted = np.flatnonzero((self.n_kernels + self.n_graph_ops) > 0)
        launch_kinds = pl.DataFrame(
            {
                "range_id": self.slot_ids[counted],
                "n_kernels": self.n_kernels[counted],
                "n_graph_ops": self.n_graph_ops[counted],
                "graph_sum_ns": self.graph_sum_ns[counted],
            },
            schema=LAUNCH_KINDS_SCHEMA,
        )
        top = _sum_top(pl.concat(self.top)) if self.top else None
        top_kernels = (
            pl.DataFrame(schema=TOP_KERNELS_SCHEMA)
            if top is None
            else top.with_columns(
                group=pl.Series(self.group_names, dtype=pl.String).gather(top["group"])
            )
            .select(TOP_KERNELS_SCHEMA.names())
            .sort(
                ["group", "total_ns", "name_id", "graph_key"],
                descending=[False, True, False, False],
                nulls_last=False,
            )
        )
        devices = pl.DataFrame(
            {"device_id": list(self.device_ops), "n_ops": list(self.device_ops.values())},
            schema=DEVICE_OPS_SCHEMA,
        ).sort("device_id")
        kinds = np.flatnonzero(self.kind_ops > 0)
        op_kinds = pl.DataFrame(
            {"kind": [KINDS[i] for i in kinds], "n_ops": self.kind_ops[kinds]},
            schema=KIND_OPS_SCHEMA,
        )
        gpu_windows, gpu_groups = (None, None) if self.windows is None else self.windows.frames()
        step_kernels = (
            _sum_top(pl.concat(self.step_top)).rename({"group": "window_id"})
            if self.step_top
            else pl.DataFrame(schema=STEP_KERNELS_SCHEMA)
        )
        ops = None
        if self.assigned is not None:
            ops = pl.concat([pl.DataFrame(schema=OP_ASSIGNMENT_SCHEMA), *self.assigned])
        trace_kernels = (
            _sum_top(pl.concat(self.trace_top)).drop("group")
            if self.trace_top
            else pl.DataFrame(schema=TRACE_KERNELS_SCHEMA)
        )
        return StreamResult(
            trace_kernels=trace_kernels.select(TRACE_KERNELS_SCHEMA.names()).cast(
                dict(TRACE_KERNELS_SCHEMA)  # type: ignore[arg-type]
            ),
            trace_busy_ns=int(self.whole_trace.gpu_busy_ns[0]),
            ops=ops,
            ranges=ranges,
            unattributed=unattributed,
            launch_kinds=launch_kinds,
            top_kernels=top_kernels.cast(dict(TOP_KERNELS_SCHEMA)),  # type: ignore[arg-type]
            devices=devices,
            op_kinds=op_kinds,
            gpu_windows=gpu_windows,
            gpu_groups=gpu_groups,
            step_kernels=step_kernels.select(STEP_KERNELS_SCHEMA.names()).cast(
                dict(STEP_KERNELS_SCHEMA)  # type: ignore[arg-type]
            ),
            stats=stats,
        )


def _assignment(
    launched: pl.DataFrame, own: pl.Series, range_id: np.ndarray, reason: np.ndarray
) -> pl.DataFrame:
    """Each op's launch, range and label (`OP_ASSIGNMENT_SCHEMA`): attributed on its launching
    thread (`own`) or another's, else why not (`reason`, an index of `REASONS`)."""
    assigned = pl.Series(range_id) >= 0
    why = pl.Series(REASONS, dtype=UNATTRIBUTED_REASON).gather(reason)
    return launched.select(
        "op_id",
        "launch_tid",
        "launch_ns",
        range_id=pl.when(assigned).then(pl.Series(range_id)),
        attributed_by=pl.when(own.is_not_null())
        .then(pl.lit("launch_thread", ATTRIBUTED_BY))
        .when(assigned)
        .then(pl.lit("other_thread_time", ATTRIBUTED_BY)),
        unattributed_reason=pl.when(~assigned).then(why),
    ).cast(dict(OP_ASSIGNMENT_SCHEMA))  # type: ignore[arg-type]


def _index_of(ids: np.ndarray) -> np.ndarray:
    """A table from range id to its place in `ids` (-1 elsewhere)."""
    table = np.full(int(ids.max()) + 1 if ids.size else 1, -1, dtype=np.int64)
    table[ids] = np.arange(ids.size)
    return table


def _lookup_ids(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """`table[id]` for each id (-1 for -1 and for ids beyond the table)."""
    inside = (ids >= 0) & (ids < table.size)
    return np.where(inside, table[np.where(inside, ids, 0)], -1)


def _scatter(n: int, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`n` zeros with `values` at the places `at`."""
    out = np.zeros(n, dtype=values.dtype)
    out[at] = values
    return out


def _rows(frame: pl.DataFrame, rows: np.ndarray) -> pl.DataFrame:
    """The given rows of `frame`."""
    return frame.select(pl.all().gather(pl.Series(rows, dtype=pl.Int64)))


def _per_kernel(rows: pl.DataFrame, group: np.ndarray) -> pl.DataFrame:
    """Count and time per (group, kernel name or graph) of `rows`, row i in `group[i]`."""
    return (
        rows.select(
            pl.Series("group", group),
            "kind",
            "name_id",
            graph_key=pl.when(pl.col("kind") == "graph").then(pl.col("graph_id")),
            duration=pl.col("end_ns") - pl.col("start_ns"),
        )
        .group_by("group", "kind", "name_id", "graph_key")
        .agg(count=pl.len().cast(pl.Int64), total_ns=pl.col("duration").sum())
    )


def _folded(parts: list[pl.DataFrame], part: pl.DataFrame) -> list[pl.DataFrame]:
    """`parts` and `part`, summed into one frame once there are more than 64 (bounded memory)."""
    parts = [*parts, part]
    return [_sum_top(pl.concat(parts))] if len(parts) > 64 else parts


def _sum_top(parts: pl.DataFrame) -> pl.DataFrame:
    """Top-kernel counts and times summed over the parts of several batches."""
    return parts.group_by("group", "kind", "name_id", "graph_key").agg(
        pl.col("count").sum(), pl.col("total_ns").sum()
    )


class _OpColumns:
    """The numpy columns of released ops that the totals read, in launch order."""

    def __init__(self, launched: pl.DataFrame) -> None:
        self.dev = launched["device_id"].to_numpy()
        self.start = launched["start_ns"].to_numpy()
        self.end = launched["end_ns"].to_numpy()
        self.kind = launched["kind"].to_physical().to_numpy().astype(np.int64)
        self.kernel = self.kind == KERNEL
        self.first = launched["first_of_launch"].to_numpy()
        self.op_id = launched["op_id"].to_numpy()
        self.has_launch = launched["launch_ns"].is_not_null().to_numpy()
        self.launch = launched["launch_ns"].fill_null(-1).to_numpy()

    def stats(
        self, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`RangeTotals.add`'s columns for the given rows."""
        return self.dev[rows], self.start[rows], self.end[rows], self.kernel[rows], self.first[rows]
