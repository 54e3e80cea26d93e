"""The report on a timeline: a Perfetto trace (`mfu-analyze --perfetto FILE`) that opens in
ui.perfetto.dev, built with Google's `perfetto` package (its trace builders and protos).

Tracks: one per host thread holding the report's ranges (stage instances, decode steps and the
ranges open around them: image, warmup) as nested slices whose debug arguments are the JSON
fields of their report level (`report.levels`: FLOPs, MFU, verdict, …); one per GPU stream
(under one per device) with the GPU ops as slices; and one counter track per `STEP_COUNTERS`
entry, a value at the start of every decode step. Timestamps are nsys's own (ns from the start
of the capture), so a slice here and in the nsys GUI start at the same number.

Memory stays bounded: the ops are read in start-ordered batches (`Trace.gpu_op_batches`), and
each batch becomes packets, is serialized and written before the next is read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Final

import numpy as np
import polars as pl
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import (
    CounterDescriptor,
    DebugAnnotation,
    EventName,
    InternedData,
    ProcessDescriptor,
    ThreadDescriptor,
    TracePacket,
    TrackDescriptor,
    TrackEvent,
)
from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder, TraceProtoBuilder

from llm_perf_opt.errors import UnorderedTableError
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.report.fields import JSON, Level
from llm_perf_opt.report.levels import (
    DECODE_STEP,
    ENGINE_STEP,
    INSTANCE,
    decode_step_frame,
    engine_step_frame,
    instance_frame,
)
from llm_perf_opt.trace import Trace
from llm_perf_opt.vocab import PerfettoGpuOps

# Ops turned into packets at once: their protobuf objects (~0.5 kB per op) stay near 25 MB.
PACKET_BATCH_OPS: Final = 50_000
SEQUENCE: Final = 1
BEGIN: Final = TrackEvent.TYPE_SLICE_BEGIN
END: Final = TrackEvent.TYPE_SLICE_END
COUNTER: Final = TrackEvent.TYPE_COUNTER
NEEDS_STATE: Final = TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
CLEARED: Final = TracePacket.SEQ_INCREMENTAL_STATE_CLEARED


def engine_steps(report: MfuReport) -> pl.DataFrame:
    """The engine step level's frame with the `range_id` of each step (the level's JSON keys
    steps by index; the timeline joins them to their ranges)."""
    steps = () if report.engine is None else report.engine.steps
    ids = pl.Series("range_id", [s.range_id for s in steps], dtype=pl.Int64)
    return engine_step_frame(report).with_columns(ids)


@dataclass(frozen=True)
class StepCounter:
    """A counter track: one value per item of a level whose items are ranges (a decode step),
    an expression over the level's frame (JSON units) placed at the range's start, shown in
    `unit`."""

    name: str
    unit: str
    value: pl.Expr
    frame: Callable[[MfuReport], pl.DataFrame] = decode_step_frame


# The counter tracks; a new per-step series (of decode steps, or of another level of ranges
# with its `frame`) joins with one entry here.
STEP_COUNTERS: Final = (
    StepCounter("MFU (trace) per decode step", "%", pl.col("mfu_trace") * 100),
    StepCounter("GPU busy % per decode step", "%", pl.col("gpu_busy_s") / pl.col("wall_s") * 100),
    StepCounter("context tokens per decode step (C)", "tokens", pl.col("ctx_len")),
    StepCounter("host syncs per decode step", "syncs", pl.col("n_syncs")),
    # engine steps carry no host-sync count (serving.EngineStep): no syncs track for them
    StepCounter("MFU (trace) per engine step", "%", pl.col("mfu_trace") * 100, engine_steps),
    StepCounter(
        "tokens per engine step",
        "tokens",
        pl.col("ctx_tokens") + pl.col("gen_tokens"),
        engine_steps,
    ),
    StepCounter(
        "GPU busy % per engine step",
        "%",
        pl.col("gpu_busy_s") / pl.col("wall_s") * 100,
        engine_steps,
    ),
)


@dataclass(frozen=True)
class SliceLevel:
    """A report level whose items are ranges: each becomes a slice carrying the level's JSON
    fields as debug arguments (`range_id` joins it to the range)."""

    level: Level
    frame: Callable[[MfuReport], pl.DataFrame]
    extra: Callable[[MfuReport, Mapping[str, Any]], Mapping[str, Any]] = lambda _r, _row: {}


def _stage_facts(report: MfuReport, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """What an instance slice adds from its stage: the verdict, the host label and the share of
    the stage's kernel time each kernel category takes (`share.<category>`)."""
    s = report.stages[row["stage"]]
    shares = {f"share.{c.category}": c.share for c in s.categories}
    return {"verdict": s.verdict, "advice": s.advice, **shares}


def _phase_facts(report: MfuReport, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """What an engine step slice adds: its range id (the level's JSON keys steps by index) and
    its phase's verdict (steps have none of their own)."""
    phases = () if report.engine is None else report.engine.phases
    verdict = next((p.verdict for p in phases if p.phase == row["phase"]), None)
    return {"range_id": row["range_id"], "verdict": verdict}


# The levels whose ranges are slices; a new level of ranges joins with one entry here.
SLICE_LEVELS: Final = (
    SliceLevel(INSTANCE, instance_frame, _stage_facts),
    SliceLevel(DECODE_STEP, decode_step_frame),
    SliceLevel(ENGINE_STEP, engine_steps, _phase_facts),
)


@dataclass
class TimelineStats:
    """What was written: tracks, slices, counter values and GPU ops (for tests and notes)."""

    thread_tracks: int = 0
    range_slices: int = 0
    counter_tracks: int = 0
    counter_values: int = 0
    gpu_tracks: int = 0
    gpu_ops: int = 0
    gpu_ops_clipped: int = 0


def write_timeline(
    trace: Trace,
    ranges: pl.DataFrame,
    report: MfuReport,
    out: IO[bytes],
    *,
    gpu_ops: PerfettoGpuOps = "all",
    batch_rows: int = 200_000,
) -> TimelineStats:
    """Write the Perfetto trace of `report` (analyzed from `trace`, whose attribution gave
    `ranges`) into `out`.

    `gpu_ops`: `all` the GPU ops of the trace, `report` only those overlapping the GPU span
    (`proj_start_ns` … its end) of a stage instance or decode step of the report, `none` no GPU
    tracks. An op that ends after the next op of its stream starts is cut at that start, so
    slices on a stream never overlap (none does in the committed traces).
    """
    stats = TimelineStats()
    writer = StreamingTraceProtoBuilder(out)
    first = TracePacket(trusted_packet_sequence_id=SEQUENCE, sequence_flags=CLEARED)
    first.timestamp = int(ranges.select(pl.col("cpu_start_ns").min()).item() or 0)
    writer.write_packet(first)
    kept = report_ranges(ranges, report)
    builder = TraceProtoBuilder()
    _range_tracks(trace, kept, report, builder, stats)
    _counters(kept, report, builder, stats)
    out.write(builder.serialize())
    if gpu_ops != "none":
        ids = level_range_ids(report)["range_id"]
        windows = (
            _windows(kept.filter(pl.col("range_id").is_in(ids))) if gpu_ops == "report" else None
        )
        gpus = GpuTracks(trace, stats)
        for batch in _clipped(_op_batches(trace, batch_rows), stats):
            if windows is not None:
                batch = batch.filter(_overlapping(batch, windows))
            for start in range(0, batch.height, PACKET_BATCH_OPS):
                out.write(gpus.packets(batch.slice(start, PACKET_BATCH_OPS)))
    return stats


def level_range_ids(report: MfuReport) -> pl.DataFrame:
    """`range_id` of every item of the slice levels (stage instances, decode steps)."""
    return pl.concat([level.frame(report).select("range_id") for level in SLICE_LEVELS])


def report_ranges(ranges: pl.DataFrame, report: MfuReport) -> pl.DataFrame:
    """The ranges of the report's slice levels and every range open around them (image,
    warmup, …), in start order, outer ranges first."""
    ids = level_range_ids(report)
    wanted = set(ids["range_id"].to_list())
    parents = ranges.select("range_id", "parent_id")
    frontier = ids
    while not frontier.is_empty():
        up = frontier.join(parents, on="range_id")["parent_id"].drop_nulls().unique()
        frontier = pl.DataFrame({"range_id": [p for p in up.to_list() if p not in wanted]},
                                schema={"range_id": pl.Int64})  # fmt: skip
        wanted.update(frontier["range_id"].to_list())
    return ranges.filter(pl.col("range_id").is_in(list(wanted))).sort(
        "cpu_start_ns", "depth", "range_id"
    )


def _range_tracks(
    trace: Trace, kept: pl.DataFrame, report: MfuReport, builder: TraceProtoBuilder,
    stats: TimelineStats,
) -> None:  # fmt: skip
    """A track per thread holding kept ranges (under its process), the ranges as slices."""
    processes = dict(trace.processes().select("pid", "name").iter_rows())
    threads = {(p, t): n for p, t, n in trace.threads().select("pid", "tid", "name").iter_rows()}
    uuid_of: dict[int, int] = {}
    for pid in kept["pid"].unique().sort().to_list():
        track = _descriptor(builder, uuid=_uuid(("process", pid)))
        track.process.CopyFrom(ProcessDescriptor(pid=pid, process_name=processes.get(pid) or ""))
    for gtid, pid, tid in kept.select("global_tid", "pid", "tid").unique().sort("tid").iter_rows():
        uuid_of[gtid] = _uuid(("thread", gtid))
        track = _descriptor(builder, uuid=uuid_of[gtid], parent=_uuid(("process", pid)))
        name = threads.get((pid, tid)) or ""
        track.thread.CopyFrom(ThreadDescriptor(pid=pid, tid=tid, thread_name=name))
        stats.thread_tracks += 1
    args = _slice_args(report)
    rows = kept.select("range_id", "name", "global_tid", "cpu_start_ns", "cpu_duration_ns")
    for rid, name, gtid, start, duration in rows.iter_rows():
        begin = _event(builder, start, uuid_of[gtid], BEGIN)
        begin.track_event.name = name
        for key, value in args.get(rid, {}).items():
            _annotate(begin.track_event.debug_annotations.add(), key, value)
        _event(builder, start + duration, uuid_of[gtid], END)
        stats.range_slices += 1


def _slice_args(report: MfuReport) -> dict[int, dict[str, Any]]:
    """Per range id: its level's JSON fields and what the level adds."""
    out: dict[int, dict[str, Any]] = {}
    for level in SLICE_LEVELS:
        for row in level.frame(report).to_dicts():
            fields = {f.name: row[f.name] for f in level.level.fields if JSON in f.outputs}
            out[int(row["range_id"])] = fields | dict(level.extra(report, row))
    return out


def _annotate(annotation: DebugAnnotation, key: str, value: Any) -> None:
    annotation.name = key
    if value is None:
        annotation.string_value = "null"
    elif isinstance(value, bool):
        annotation.bool_value = value
    elif isinstance(value, int):
        annotation.int_value = value
    elif isinstance(value, float):
        annotation.double_value = value
    else:
        annotation.string_value = str(value)


def _counters(
    kept: pl.DataFrame, report: MfuReport, builder: TraceProtoBuilder, stats: TimelineStats
) -> None:
    """The `STEP_COUNTERS` tracks of the levels that have items: each item's value at its
    range's start."""
    starts = kept.select("range_id", "cpu_start_ns")
    for counter in STEP_COUNTERS:
        items = counter.frame(report)
        if items.is_empty():
            continue
        uuid = _uuid(("counter", counter.name))
        track = _descriptor(builder, uuid=uuid)
        track.name = counter.name
        track.counter.CopyFrom(CounterDescriptor(unit_name=counter.unit))
        stats.counter_tracks += 1
        values = items.join(starts, on="range_id", maintain_order="left").select(
            "cpu_start_ns", counter.value.cast(pl.Float64).alias("v")
        )
        for ts, value in values.drop_nulls().iter_rows():
            _event(builder, ts, uuid, COUNTER).track_event.double_counter_value = value
            stats.counter_values += 1


def _windows(kept: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The GPU spans of the ranges that launched work, merged into sorted disjoint intervals
    (starts, ends)."""
    spans = kept.filter(pl.col("proj_start_ns").is_not_null()).select(
        start=pl.col("proj_start_ns"), end=pl.col("proj_start_ns") + pl.col("proj_duration_ns")
    ).sort("start")  # fmt: skip
    starts, ends = spans["start"].to_numpy(), spans["end"].to_numpy()
    if starts.size == 0:
        return starts, ends
    reach = np.maximum.accumulate(ends)
    new = np.r_[True, starts[1:] > reach[:-1]]  # a span starting after all before it ended
    return starts[new], np.maximum.reduceat(reach, np.flatnonzero(new))


def _overlapping(batch: pl.DataFrame, windows: tuple[np.ndarray, np.ndarray]) -> pl.Series:
    """Which ops of `batch` overlap a window (the last window starting before the op ends)."""
    starts, ends = windows
    at = np.searchsorted(starts, batch["end_ns"].to_numpy(), side="left") - 1
    hit = (at >= 0) & (ends[np.maximum(at, 0)] > batch["start_ns"].to_numpy())
    return pl.Series(hit)


def _op_batches(trace: Trace, rows: int) -> Iterator[pl.DataFrame]:
    """The GPU ops in start order, `rows` at a time; a trace whose tables are not stored in
    start order is read whole and sorted (as its analysis was)."""
    columns = ("kind", "device_id", "stream_id", "start_ns", "end_ns", "name_id", "graph_id")
    try:
        for batch in trace.gpu_op_batches(rows):
            yield batch.select(columns)
    except UnorderedTableError:
        ops = trace.gpu_ops(lean=True).sort("start_ns", "op_id").select(columns)
        yield from ops.iter_slices(rows)


def _clipped(batches: Iterable[pl.DataFrame], stats: TimelineStats) -> Iterator[pl.DataFrame]:
    """The batches with each op's end cut at the start of the next op of its stream; the last
    op of each stream waits for the next batch (at most one op per stream is held)."""
    held: pl.DataFrame | None = None
    stream = ("device_id", "stream_id")
    for batch in batches:
        rows = batch if held is None else pl.concat([held, batch])
        nxt = rows.with_columns(next_ns=pl.col("start_ns").shift(-1).over(stream))
        last = nxt["next_ns"].is_null()
        held = rows.filter(last)
        yield _cut(nxt.filter(~last), stats)
    if held is not None and not held.is_empty():
        yield held.sort("start_ns")


def _cut(rows: pl.DataFrame, stats: TimelineStats) -> pl.DataFrame:
    over = rows["end_ns"] > rows["next_ns"]
    stats.gpu_ops_clipped += int(over.sum())
    return rows.with_columns(end_ns=pl.min_horizontal("end_ns", "next_ns")).drop("next_ns")


class GpuTracks:
    """Turns op batches into packets: a track per device and stream (described when first
    seen), each op a slice named by an interned event name."""

    def __init__(self, trace: Trace, stats: TimelineStats) -> None:
        self._trace = trace
        self._stats = stats
        info = trace.gpu_info()
        self._gpu_names = dict(info.select("device_id", "name").iter_rows())
        self._devices: set[int] = set()
        self._streams: set[tuple[int, int]] = set()
        self._names: dict[str, int] = {}  # event name ids given so far, by op key

    def packets(self, batch: pl.DataFrame) -> bytes:
        builder = TraceProtoBuilder()
        keyed = batch.with_columns(
            key=pl.when(pl.col("kind") == "graph")
            .then(pl.format("CUDA graph {}", pl.col("graph_id")))
            .when(pl.col("name_id").is_null())
            .then(pl.col("kind").cast(pl.String))
            .otherwise(pl.col("name_id").cast(pl.String))
        )
        iids = self._intern(keyed, builder)
        streams = keyed.select("device_id", "stream_id").unique()
        for device, stream in streams.iter_rows():
            self._describe(builder, device, stream)
        tracks = streams.with_columns(
            track=pl.Series(
                [_uuid(("stream", d, s)) for d, s in streams.iter_rows()], dtype=pl.UInt64
            )
        )
        rows = keyed.join(tracks, on=["device_id", "stream_id"], maintain_order="left").select(
            "start_ns",
            "end_ns",
            "track",
            iid=pl.col("key").replace_strict(iids, return_dtype=pl.Int64),
        )
        add = builder.trace.packet.add
        for start, end, track, iid in rows.iter_rows():
            add(timestamp=start, trusted_packet_sequence_id=SEQUENCE, sequence_flags=NEEDS_STATE,
                track_event=TrackEvent(type=BEGIN, track_uuid=track, name_iid=iid))  # fmt: skip
            add(timestamp=end, trusted_packet_sequence_id=SEQUENCE,
                track_event=TrackEvent(type=END, track_uuid=track))  # fmt: skip
        self._stats.gpu_ops += rows.height
        data: bytes = builder.serialize()
        return data

    def _intern(self, keyed: pl.DataFrame, builder: TraceProtoBuilder) -> dict[str, int]:
        """Event name ids of the batch's keys; new names go into an interned-data packet."""
        names = self._names
        new = [k for k in keyed["key"].unique().to_list() if k not in names]
        if new:
            ids = pl.Series([int(k) for k in new if k.isdigit()], dtype=pl.Int64)
            text = dict(
                zip(
                    ids.cast(pl.String).to_list(),
                    self._trace.resolve_strings(ids).to_list(),
                    strict=True,
                )
            )
            packet = builder.add_packet()
            packet.trusted_packet_sequence_id = SEQUENCE
            packet.sequence_flags = NEEDS_STATE
            packet.timestamp = int(keyed.select(pl.col("start_ns").min()).item())
            interned = InternedData()
            for key in new:
                names[key] = len(names) + 1
                name = text.get(key) or key
                interned.event_names.append(EventName(iid=names[key], name=name))
            packet.interned_data.CopyFrom(interned)
        return {k: names[k] for k in keyed["key"].unique().to_list()}

    def _describe(self, builder: TraceProtoBuilder, device: int, stream: int) -> None:
        if device not in self._devices:
            self._devices.add(device)
            track = _descriptor(builder, uuid=_uuid(("device", device)))
            gpu = self._gpu_names.get(device)
            track.name = f"GPU {device}" + (f": {gpu}" if gpu else "")
        if (device, stream) not in self._streams:
            self._streams.add((device, stream))
            track = _descriptor(
                builder, uuid=_uuid(("stream", device, stream)), parent=_uuid(("device", device))
            )
            track.name = f"GPU {device} stream {stream}"
            self._stats.gpu_tracks += 1


def _uuid(key: tuple[Any, ...]) -> int:
    """A stable track uuid from what the track is (a process, thread, counter, device or
    stream): 63 bits of a hash that does not depend on the interpreter's seed."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


def _descriptor(builder: TraceProtoBuilder, *, uuid: int, parent: int | None = None) -> Any:
    packet = builder.add_packet()
    packet.trusted_packet_sequence_id = SEQUENCE
    track: TrackDescriptor = packet.track_descriptor
    track.uuid = uuid
    if parent is not None:
        track.parent_uuid = parent
    return track


def _event(builder: TraceProtoBuilder, ts: int, track: int, kind: int) -> TracePacket:
    packet = builder.add_packet()
    packet.timestamp = ts
    packet.trusted_packet_sequence_id = SEQUENCE
    packet.sequence_flags = NEEDS_STATE
    packet.track_event.type = kind
    packet.track_event.track_uuid = track
    return packet
