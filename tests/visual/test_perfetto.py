"""`--perfetto` on every committed trace (nsys exports and PyTorch-profiler traces), parsed back
with the perfetto package's protos: the tracks, one slice per stage range and per engine step at
the input's own timestamps carrying the report's figures, the counters equal to the JSON's
decode and engine steps, and every GPU op of the input on its stream."""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.report.perfetto import (
    STEP_COUNTERS,
    TimelineStats,
    _clipped,
    write_timeline,
)
from llm_perf_opt.trace.columns import GPU_OP_TABLES
from tests.helpers.committed import CASES, KINETO
from tests.helpers.visual import Analyzed

BEGIN, END, COUNTER = (
    TrackEvent.TYPE_SLICE_BEGIN,
    TrackEvent.TYPE_SLICE_END,
    TrackEvent.TYPE_COUNTER,
)


@dataclass
class Parsed:
    """The packets of a .pftrace: tracks by uuid, and each track's events in file order."""

    threads: dict[int, tuple[int, int]] = field(default_factory=dict)
    counters: dict[int, str] = field(default_factory=dict)
    streams: dict[int, str] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    events: dict[int, list[tuple[int, int, str, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )


def parse(data: bytes) -> Parsed:
    out = Parsed()
    for packet in Trace.FromString(data).packet:
        for name in packet.interned_data.event_names:
            out.names[name.iid] = name.name
        if packet.HasField("track_descriptor"):
            track = packet.track_descriptor
            if track.HasField("thread"):
                out.threads[track.uuid] = (track.thread.pid, track.thread.tid)
            elif track.HasField("counter"):
                out.counters[track.uuid] = track.name
            elif track.name.startswith("GPU") and " stream " in track.name:
                out.streams[track.uuid] = track.name
        if packet.HasField("track_event"):
            event = packet.track_event
            name = event.name or out.names.get(event.name_iid, "")
            args = {a.name: _arg(a) for a in event.debug_annotations}
            value = event.double_counter_value if event.type == COUNTER else 0
            out.events[event.track_uuid].append((packet.timestamp, event.type, name, args))
            if event.type == COUNTER:
                out.events[event.track_uuid][-1][3]["value"] = value
    return out


def paired(events: list[tuple[int, int, str, dict[str, Any]]]) -> tuple[list[Any], int]:
    """The slices of one track as Perfetto builds them: events sorted by time (stably, as the
    trace processor's sorter does), a begin opening a slice, an end closing the innermost open
    one. Returns (begin, end, name, args) per slice and the deepest nesting seen."""
    out, stack, deepest = [], [], 0
    for ts, kind, name, args in sorted(events, key=lambda e: e[0]):
        if kind == BEGIN:
            stack.append((ts, name, args))
            deepest = max(deepest, len(stack))
        elif kind == END:
            begin, n, a = stack.pop()  # an end without an open slice fails here
            out.append((begin, ts, n, a))
    assert not stack, "slices left open"
    return out, deepest


def _arg(a: Any) -> Any:
    kind = a.WhichOneof("value")
    return None if a.string_value == "null" and kind == "string_value" else getattr(a, kind)


@dataclass
class Export:
    """What the input holds, read without the tool: the times of its ranges (an nsys export's
    NVTX rows by rowid, the tool's range id; a PyTorch-profiler trace's `user_annotation` spans
    by name), each GPU op's start, the (device, stream) pairs, and the threads holding ranges."""

    by_id: dict[int, tuple[int, int]]
    by_name: dict[str, set[tuple[int, int]]]
    ops: Counter[int]
    streams: set[tuple[int, int]]
    threads: Callable[[list[int], list[tuple[str, int, int]]], int]

    def holds(self, range_id: int, name: str, span: tuple[int, int]) -> bool:
        if self.by_id:
            return self.by_id.get(range_id) == span
        return span in self.by_name.get(name, set())


def read_export(path: Path) -> Export:
    if path.name.endswith(KINETO):
        return _kineto(path)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    nvtx = dict(
        ((rowid, (start, end)) for rowid, start, end in con.execute(
            "SELECT rowid, start, end FROM NVTX_EVENTS WHERE end IS NOT NULL"))
    )  # fmt: skip
    tables = [
        t
        for t in GPU_OP_TABLES.values()
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (t,)).fetchone()
    ]
    ops = Counter(s for t in tables for (s,) in con.execute(f"SELECT start FROM {t}"))
    streams = {
        row for t in tables for row in con.execute(f"SELECT DISTINCT deviceId, streamId FROM {t}")
    }

    def threads(ids: list[int], _spans: list[tuple[str, int, int]]) -> int:
        marks = ",".join("?" * len(ids))
        holders = f"SELECT DISTINCT globalTid FROM NVTX_EVENTS WHERE rowid IN ({marks})"
        return len(con.execute(holders, ids).fetchall())

    return Export(nvtx, {}, ops, streams, threads)


def _kineto(path: Path) -> Export:
    """Kineto writes µs with up to 3 decimals: exact as decimals, times 1000 ns."""
    with gzip.open(path) as f:
        events = json.load(f, parse_float=Decimal)["traceEvents"]

    def ns(v: Any) -> int:
        return int(Decimal(v) * 1000)

    spans = [e for e in events if e.get("cat") == "user_annotation" and e.get("ph") == "X"]
    by_name: dict[str, set[tuple[int, int]]] = defaultdict(set)
    holder: dict[tuple[str, int, int], set[tuple[Any, Any]]] = defaultdict(set)
    for e in spans:
        begin, end = ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])
        by_name[e["name"]].add((begin, end))
        holder[(e["name"], begin, end)].add((e["pid"], e["tid"]))
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    ops = Counter(ns(e["ts"]) for e in gpu)
    streams = {(e["args"]["device"], e["args"]["stream"]) for e in gpu}

    def threads(_ids: list[int], named: list[tuple[str, int, int]]) -> int:
        return len(set().union(*(holder[n] for n in named)))

    return Export({}, by_name, ops, streams, threads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_perfetto_parses_back_to_the_report(analyzed: Analyzed, name: str) -> None:
    out = analyzed(name)
    doc, parsed = out.doc, parse(out.perfetto.read_bytes())
    export = read_export(out.trace)
    begins = [(ts, n, args, uuid) for uuid, evs in parsed.events.items() if uuid in parsed.threads
              for ts, kind, n, args in evs if kind == BEGIN]  # fmt: skip
    ends = sum(kind == END for uuid in parsed.threads for _, kind, _, _ in parsed.events[uuid])
    assert len(begins) == ends > 0
    end_of = {
        a["range_id"]: end
        for u in parsed.threads
        for _, end, _, a in paired(parsed.events[u])[0]
        if "range_id" in a
    }
    held: list[tuple[int, str, int]] = []  # (range id, name, start) of each report range
    for u in parsed.streams:  # ops on a stream never overlap
        assert paired(parsed.events[u])[1] == 1
    for stage, sdoc in doc["stages"].items():
        slices = [(ts, args) for ts, n, args, _ in begins if n == sdoc["range"]]
        assert len(slices) == sdoc["n_instances"] == len(sdoc["instances"]), stage
        for inst in sdoc["instances"]:
            (ts, args) = next(s for s in slices if s[1]["range_id"] == inst["range_id"])
            span = (ts, end_of[inst["range_id"]])
            assert export.holds(inst["range_id"], sdoc["range"], span)  # the input's own times
            held.append((inst["range_id"], sdoc["range"], *span))
            for key in ("flops", "mfu_trace", "mfu_wall", "instance", "gpu_busy_s"):
                assert args[key] == inst[key], (stage, key)
            assert args["verdict"] == sdoc["verdict"]
            shares = {k.removeprefix("share."): v for k, v in args.items() if "share." in k}
            assert shares == {c: v["share"] for c, v in sdoc["categories"].items()}, stage
    engine = doc["engine_steps"]
    step_slices = sorted(
        ((ts, n, a) for ts, n, a, _ in begins if "phase" in a and "step" in a),
        key=lambda s: s[2]["step"],
    )
    assert len(step_slices) == len(engine)  # one slice per engine step
    verdicts = {phase: p["verdict"] for phase, p in (doc["engine_phases"] or {}).items()}
    for (ts, n, args), step in zip(step_slices, engine, strict=True):
        span = (ts, end_of[args["range_id"]])
        assert n == step["name"] and ts == round(step["start_s"] * 1e9)
        assert export.holds(args["range_id"], n, span)
        held.append((args["range_id"], n, *span))
        for key, value in step.items():
            assert args[key] == value, key  # every JSON field of the step
        assert args["verdict"] == verdicts[step["phase"]]
    steps = doc["decode_steps"]
    by_name = {n: [e[3]["value"] for e in parsed.events[u]] for u, n in parsed.counters.items()}
    expected: dict[str, list[Any]] = {}
    if steps:
        expected |= {
            "MFU (trace) per decode step": [100 * s["mfu_trace"] for s in steps],
            "GPU busy % per decode step": [100 * s["gpu_busy_s"] / s["wall_s"] for s in steps],
            "context tokens per decode step (C)": [s["ctx_len"] for s in steps],
            "host syncs per decode step": [s["n_syncs"] for s in steps],
        }
        decode_slices = [a for _, n, a, _ in begins if "step" in a and "ctx_len" in a]
        ids = sorted(a["range_id"] for a in decode_slices)
        assert ids == sorted(s["range_id"] for s in steps)
    if engine:
        expected |= {
            "MFU (trace) per engine step": [100 * s["mfu_trace"] for s in engine],
            "tokens per engine step": [s["ctx_tokens"] + s["gen_tokens"] for s in engine],
            "GPU busy % per engine step": [100 * s["gpu_busy_s"] / s["wall_s"] for s in engine],
        }
        counter_ts = {n: [e[0] for e in parsed.events[u]] for u, n in parsed.counters.items()}
        assert counter_ts["tokens per engine step"] == [s[0] for s in step_slices]
    assert sorted(parsed.counters.values()) == sorted(expected)
    assert set(expected) <= {c.name for c in STEP_COUNTERS}
    for counter, values in expected.items():
        assert by_name[counter] == pytest.approx(values, rel=1e-12), counter
    gpu = [ts for u in parsed.streams for ts, kind, _, _ in parsed.events[u] if kind == BEGIN]
    assert Counter(gpu) == export.ops  # every kernel, copy and set of the input, at its start
    holders = export.threads([r for r, *_ in held], [(n, b, e) for _, n, b, e in held])
    assert len(parsed.threads) == holders  # a track per thread holding the report's ranges
    assert sorted(parsed.streams.values()) == sorted(
        f"GPU {d} stream {s}" for d, s in export.streams
    )


def test_gpu_ops_limited_to_the_report(analyzed: Analyzed, tmp_path: Path) -> None:
    """`report` keeps only ops overlapping the GPU span of a stage instance or decode step (the
    warmup round's ops go); `none` writes no GPU track; smaller batches give the same events."""
    out = analyzed("dsocr_v1_base")
    written: dict[str, bytes] = {}
    spans: list[tuple[int, int]] = []

    def timeline(trace: Any, analysis: Any) -> None:
        assert analysis.report is not None
        report = analysis.report
        ids = [r.range_id for s in report.stages.values() for r in s.instances]
        ids += [d.range_id for d in report.decode_steps]
        kept = analysis.ranges.filter(pl.col("range_id").is_in(ids)).drop_nulls("proj_start_ns")
        spans.extend(
            (s, s + d) for s, d in kept.select("proj_start_ns", "proj_duration_ns").iter_rows()
        )
        for mode, rows in (("all", 997), ("report", 200_000), ("none", 200_000)):
            buffer = io.BytesIO()
            write_timeline(trace, analysis.ranges, analysis.report, buffer, gpu_ops=mode,
                           batch_rows=rows)  # fmt: skip
            written[mode] = buffer.getvalue()

    analyze_trace(out.trace, AnalyzeOptions(), then=timeline)
    full, small = parse(out.perfetto.read_bytes()), parse(written["all"])
    assert _events(full) == _events(small)  # batches of 997 ops: same slices, same names
    kept, none = parse(written["report"]), parse(written["none"])
    assert not none.streams and none.threads == full.threads
    starts, ends = np.array(spans).T
    overlapping = {(u, b, e) for u, b, e in _ops(full) if bool(np.any((starts < e) & (ends > b)))}
    assert set(_ops(kept)) == overlapping
    assert 0 < len(overlapping) < len(_ops(full))


def _ops(p: Parsed) -> list[tuple[int, int, int]]:
    """(stream, start, end) of every GPU op slice: a stream's events alternate begin, end."""
    out = []
    for u in p.streams:
        evs = p.events[u]
        out += [(u, b[0], e[0]) for b, e in zip(evs[::2], evs[1::2], strict=True)]
    return out


def _events(p: Parsed) -> Counter[tuple[int, int, str, str]]:
    return Counter(
        (ts, kind, name, p.streams.get(u, "")) for u, evs in p.events.items()
        for ts, kind, name, _ in evs
    )  # fmt: skip


def test_overlapping_ops_are_cut_at_the_next_start_across_batches() -> None:
    """An op ending after the next op of its stream starts is cut there, also when the next op
    is in the next batch; other streams are untouched."""
    schema = {"kind": pl.String, "device_id": pl.Int32, "stream_id": pl.Int32,
              "start_ns": pl.Int64, "end_ns": pl.Int64, "name_id": pl.Int32,
              "graph_id": pl.UInt32}  # fmt: skip
    rows = [("kernel", 0, 7, 0, 50, 1, None), ("kernel", 0, 8, 5, 100, 1, None),
            ("kernel", 0, 7, 40, 60, 1, None), ("kernel", 0, 7, 70, 80, 1, None),
            ("kernel", 0, 8, 90, 95, 1, None)]  # fmt: skip
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    stats = TimelineStats()
    got = pl.concat(list(_clipped([frame.slice(0, 2), frame.slice(2, 3)], stats)))
    ends = dict(zip(got["start_ns"].to_list(), got["end_ns"].to_list(), strict=True))
    assert ends == {0: 40, 5: 90, 40: 60, 70: 80, 90: 95}
    assert stats.gpu_ops_clipped == 2
