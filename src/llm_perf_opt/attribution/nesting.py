"""How NVTX ranges nest on their thread, as columns: depth, parent, path, selected ancestors.

Ranges nest by containment on their thread, whatever their style (a push/pop range inside a
start/end range is its child, as in NVIDIA's report); ranges ended on another thread stay at depth
0 without a parent (NVIDIA leaves them out). On that tree: the nearest ancestor of a range among
some ranges, the selected ancestors, and the innermost selected range containing a time.
Columnar: a sweep per thread, then one join per nesting level (nesting is shallow), never a loop
over ranges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import polars as pl

from llm_perf_opt.attribution.intervals import searchsorted_in
from llm_perf_opt.trace import NVTX_RANGES_SCHEMA


def max_depth(ranges: pl.DataFrame) -> int:
    """Deepest nesting level present (0 for an empty frame)."""
    return int(ranges.select(pl.col("depth").max().fill_null(0)).item())


def with_structure(ranges: pl.DataFrame) -> pl.DataFrame:
    """Add `range_id` (the NVTX_EVENTS rowid, as NVIDIA numbers ranges), `depth`, `parent_id`,
    `path`, and the CPU columns. Ranges nest by containment on their thread, whatever their style
    (a push/pop range inside a start/end range is its child, as in NVIDIA's report); ranges ended
    on another thread stay at depth 0 without a parent (NVIDIA leaves them out)."""
    base = ranges.rename({"event_id": "range_id"}).with_columns(
        cpu_start_ns=pl.col("start_ns"),
        cpu_duration_ns=pl.col("end_ns") - pl.col("start_ns"),
    )
    pushpop = base.filter(~pl.col("ends_on_other_thread"))
    # Sweep of +1 (push) / -1 (pop) events per thread: the running sum at a push is depth + 1.
    # At equal times pops come before pushes (a range starting as another ends is its sibling),
    # except a zero-length range's own pop, after every push of its time; an enclosing push
    # comes before the one it encloses.
    events = pl.concat(
        [
            pushpop.select(
                "global_tid",
                "range_id",
                t="start_ns",
                kind=pl.lit(1),
                order=-pl.col("end_ns"),
                step=pl.lit(1),
            ),
            pushpop.select(
                "global_tid",
                "range_id",
                t="end_ns",
                kind=pl.when(pl.col("end_ns") > pl.col("start_ns")).then(0).otherwise(2),
                order=-pl.col("start_ns"),
                step=pl.lit(-1),
            ),
        ]
    ).sort("global_tid", "t", "kind", "order", "range_id")
    depth = (
        events.with_columns(level=pl.col("step").cum_sum().over("global_tid"))
        .filter(pl.col("kind") == 1)
        .select("range_id", depth=(pl.col("level") - 1).cast(pl.Int64))
    )
    ordered = pushpop.join(depth, on="range_id").sort(
        "global_tid",
        "start_ns",
        pl.col("end_ns"),
        "range_id",
        descending=[False, False, True, False],
    )
    deepest = max_depth(ordered)
    parent = pl.lit(None, pl.Int64)
    for level in range(1, deepest + 1):
        last_at_level_above = (
            pl.when(pl.col("depth") == level - 1)
            .then(pl.col("range_id"))
            .forward_fill()
            .over("global_tid")
        )
        parent = pl.when(pl.col("depth") == level).then(last_at_level_above).otherwise(parent)
    ordered = ordered.with_columns(parent_id=parent)
    flat = base.filter(pl.col("ends_on_other_thread")).with_columns(
        depth=pl.lit(0, pl.Int64), parent_id=pl.lit(None, pl.Int64)
    )
    structured = pl.concat([ordered, flat.select(ordered.columns)])
    return with_paths(structured).sort("range_id")


def ranges_around(
    batches: Callable[[bool], Iterable[pl.DataFrame]], wanted: pl.Expr
) -> pl.DataFrame:
    """The ranges (`Trace.nvtx_ranges()` rows, which `batches(first)` gives) that `wanted`
    selects, and every range open on the thread when a kept one starts (in `with_structure`'s
    sweep), until none is added: `with_structure` gives each kept row the depth, parent and path
    it has among all ranges. The analysis keeps only these when it does not write every range:
    on long traces the stage, image and decode-step ranges are a small part of the ranges.

    Two readings, each holding one batch and a few rows: the first (`first` True) keeps the
    wanted and the start/end ranges (which may overlap anything), the second the push/pop
    ranges holding the start of one of those on their thread. Push/pop ranges nest as a stack,
    so every range open around a kept one is among them."""
    first = [
        b.filter(wanted.fill_null(False) | (pl.col("style") == "StartEnd")) for b in batches(True)
    ]
    found = pl.concat(first) if first else pl.DataFrame(schema=NVTX_RANGES_SCHEMA)
    if not found.select(wanted.fill_null(False).any()).item():
        return found.clear()
    marks = found.filter(~pl.col("ends_on_other_thread")).select("global_tid", "start_ns")
    marks = marks.sort("global_tid", "start_ns")
    if marks.height:
        seen = found["event_id"].implode()
        found = pl.concat(
            [
                found,
                *(
                    _holding(b.filter(~pl.col("event_id").is_in(seen)), marks)
                    for b in batches(False)
                ),
            ]
        )
    event_id, tid, start, end = (
        found[c].to_numpy() for c in ("event_id", "global_tid", "start_ns", "end_ns")
    )
    keep = found.select(wanted.fill_null(False))[:, 0].to_numpy()
    elsewhere = found["ends_on_other_thread"].to_numpy()
    ids = _open_ancestor_ids(event_id, tid, start, end, elsewhere, keep)
    return found.filter(pl.col("event_id").is_in(ids.implode())).sort("event_id")


def _holding(batch: pl.DataFrame, marks: pl.DataFrame) -> pl.DataFrame:
    """The rows of `batch` whose interval holds one of `marks` (`global_tid, start_ns`, sorted)
    on their thread."""
    mark_tid, mark_t = marks["global_tid"].to_numpy(), marks["start_ns"].to_numpy()
    tid, start, end = (batch[c].to_numpy() for c in ("global_tid", "start_ns", "end_ns"))
    lo = np.searchsorted(mark_tid, tid, side="left")
    hi = np.searchsorted(mark_tid, tid, side="right")
    first = lo + searchsorted_in(mark_t, lo, hi, start, "left")
    holds = (first < hi) & (mark_t[np.minimum(first, mark_t.size - 1)] <= end)
    return batch.filter(pl.Series(holds))


def _open_ancestor_ids(
    event_id: np.ndarray,
    tid: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    elsewhere: np.ndarray,
    keep: np.ndarray,
) -> pl.Series:
    """`event_id`s of the `keep` ranges and of the ranges open when a kept one starts, to the
    fixed point."""
    order = np.lexsort((event_id, -end, start, tid))
    event_id, tid, start, end = event_id[order], tid[order], start[order], end[order]
    nests, keep = ~elsewhere[order], keep[order]
    del order
    n = tid.size
    while True:
        # the next kept (nesting) range after each position, n where none is
        kept_here = np.where(keep & nests, np.arange(n), n)
        nxt = np.minimum.accumulate(kept_here[::-1])[::-1]
        nxt = np.r_[nxt[1:], n]
        has = nxt < n
        at = np.where(has, nxt, 0)
        # open at the next kept push: not yet ended, or of zero length at its very time
        ends_after = (start[at] < end) | ((end == start) & (start[at] == end))
        opened = has & nests & ~keep & (tid[at] == tid) & ends_after
        if not opened.any():
            break
        keep |= opened
    return pl.Series("event_id", event_id[keep])


def with_paths(structured: pl.DataFrame) -> pl.DataFrame:
    """Full `/`-joined name paths from the root, level by level (depth is small)."""
    by_depth = structured.sort("depth")
    paths = by_depth.filter(pl.col("depth") == 0).select("range_id", path="name")
    deepest = max_depth(by_depth)
    for level in range(1, deepest + 1):
        level_rows = by_depth.filter(pl.col("depth") == level).join(
            paths.rename({"range_id": "parent_id", "path": "parent_path"}), on="parent_id"
        )
        paths = pl.concat(
            [
                paths,
                level_rows.select("range_id", path=pl.col("parent_path") + "/" + pl.col("name")),
            ]
        )
    return structured.join(paths, on="range_id", how="left")


def selected_chain(ranges: pl.DataFrame) -> pl.DataFrame:
    """Selected ranges with `sel_parent_id`: their nearest selected ancestor (or null)."""
    link = ranges.select("range_id", "parent_id", "selected")
    anc = ranges.select("range_id", cand=pl.col("parent_id"))
    deepest = max_depth(ranges)
    for _ in range(deepest):
        anc = (
            anc.join(link, left_on="cand", right_on="range_id", how="left")
            .with_columns(
                cand=pl.when(pl.col("selected").fill_null(True)).then("cand").otherwise("parent_id")
            )
            .select("range_id", "cand")
        )
    return (
        ranges.filter("selected")
        .join(anc.rename({"cand": "sel_parent_id"}), on="range_id", how="left")
        .select("range_id", "global_tid", "start_ns", "end_ns", "depth", "sel_parent_id")
    )


def innermost_containing(chain: pl.DataFrame, queries: pl.DataFrame, by: str) -> pl.Series:
    """For each query (`q_by`, `t`), the latest-starting selected range of group `by` containing
    `t`: an as-of join on start, then up the selected-ancestor chain while the candidate ended."""
    table = chain.sort(by, "start_ns", "depth").select(q_by=by, t="start_ns", cand="range_id")
    ordered = queries.with_row_index("q").sort("q_by", "t", nulls_last=True)
    found = ordered.join_asof(
        table,
        on="t",
        by="q_by",
        strategy="backward",
        check_sortedness=False,  # sorted by (q_by, t) above; polars cannot verify within groups
    )
    t = found["t"].fill_null(-1).to_numpy()
    cand = found["cand"].fill_null(-1).to_numpy(writable=True)
    # per chain range, by sorted id: its end and its nearest selected ancestor (searches, not
    # joins, nor tables as large as the largest id)
    ids = chain["range_id"].to_numpy()
    by_id = np.argsort(ids)
    ids = ids[by_id]
    end_of = chain["end_ns"].to_numpy()[by_id]
    parent_of = chain["sel_parent_id"].fill_null(-1).to_numpy()[by_id]
    open_rows = np.flatnonzero(cand >= 0)
    while open_rows.size:
        at = np.searchsorted(ids, cand[open_rows])
        ended = end_of[at] < t[open_rows]
        open_rows, at = open_rows[ended], at[ended]
        cand[open_rows] = parent_of[at]
        open_rows = open_rows[cand[open_rows] >= 0]
    result = np.full(len(cand), -1, dtype=np.int64)
    result[found["q"].to_numpy()] = cand
    return pl.Series("range_id", result, dtype=pl.Int64).replace(-1, None)


def ancestor_members(ranges: pl.DataFrame, lean: pl.DataFrame, guessed: pl.Series) -> pl.DataFrame:
    """Inclusive pairs for heuristically attributed ops: their range and all its ancestors."""
    ops = lean.with_columns(range_id=guessed).filter(pl.col("range_id").is_not_null())
    parents = ranges.select("range_id", up="parent_id")
    out = [ops]
    current = ops
    for _ in range(max_depth(ranges)):
        current = (
            current.join(parents, on="range_id")
            .filter(pl.col("up").is_not_null())
            .with_columns(range_id=pl.col("up"))
            .drop("up")
        )
        if current.is_empty():
            break
        out.append(current)
    return pl.concat(out)


def nearest_ancestor(ranges: pl.DataFrame, start: pl.Series, targets: pl.Series) -> pl.Series:
    """For each range id of `start`, itself or its nearest ancestor (along `ranges`' `parent_id`)
    among `targets`; null where there is none."""
    found = pl.Series("ancestor", [None] * len(start), dtype=pl.Int64)
    candidate = start.cast(pl.Int64)
    for _ in range(max_depth(ranges) + 1):
        hit = pl.select(pl.when(candidate.is_in(targets.implode())).then(candidate)).to_series()
        found = found.fill_null(hit)
        candidate = candidate.replace_strict(
            ranges["range_id"], ranges["parent_id"], default=None, return_dtype=pl.Int64
        )
    return found.alias("ancestor")
