"""`HostViewStream` over API call batches equals the whole-table host view
(`tests/helpers/perop.host_view`): on
every committed trace with a CUDA API table, a generated one, both backends where a Parquet or
Arrow twin exists, random nested calls, and hand-built ties and nested calls across batch
borders; `Trace.api_call_batches` reads the table in start order or raises."""

from __future__ import annotations

import lzma
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import polars as pl
import pytest
from benchmarks.gen_trace import generate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from llm_perf_opt.attribution import HOST_CALL_BATCH_SCHEMA, StreamOrderError, range_frame
from llm_perf_opt.errors import UnorderedTableError
from llm_perf_opt.hostview.stream import HostViewStream
from llm_perf_opt.trace import Trace, open_trace
from tests.helpers.fold_compare import batches, groups_and_windows
from tests.helpers.frames import gpid, gtid
from tests.helpers.mutate import mutated
from tests.helpers.paths import DATA, REPO
from tests.helpers.perop import CALLS_SCHEMA, SYNCS_SCHEMA, host_view

# Every committed SQLite trace (all have a CUDA API table).
TRACES: Final = sorted((REPO / "traces").glob("*.sqlite.xz")) + sorted(DATA.rglob("*.sqlite*"))
WHOLE: Final = 1 << 40
# A batch takes about a millisecond however small: the smallest sizes run over this many calls
# from the middle of a trace (against every window), the larger ones over the whole table.
SLICE_CALLS: Final = 600
TINY: Final = (1, 3, 64)
LARGE: Final = (4093, WHOLE)
MAIN, WORKER, OTHER_THREAD = gtid(1), gtid(2), gtid(3)


def stream(
    windows: pl.DataFrame, syncs: pl.DataFrame | None, trace: Trace, parts: Iterable[pl.DataFrame]
) -> pl.DataFrame:
    return HostViewStream(windows, syncs, trace.resolve_strings).add_all(parts).result()


def trace_windows(trace: Trace) -> pl.DataFrame:
    """The analysis's windows (stage ranges and decode steps, or every range of a trace without
    stages) and every NVTX range as a window of its own."""
    raw = trace.nvtx_ranges()
    _, windows = groups_and_windows(range_frame(raw))
    every = raw.select(window_id="event_id", global_tid="global_tid", start_ns="start_ns",
                       end_ns="end_ns")  # fmt: skip
    return pl.concat([windows.select(every.columns), every]).unique(maintain_order=True)


def name_ids(calls: pl.DataFrame, trace: Trace) -> pl.DataFrame:
    """`calls` (of `api_calls(with_names=True)`) as the batches read them: with `name_id`."""
    read = pl.concat(trace.api_call_batches(WHOLE))
    assert_frame_equal(read.drop("name_id"), calls.drop("name"))
    return read


def assert_stream_equal(path: Path, sizes: tuple[int, ...], tiny: tuple[int, ...]) -> None:
    """The stream over the reader's batches of each size in `sizes`, and over in-memory batches
    of each size in `tiny` (the whole table when it is small, else a slice of it), equals
    `host_view` over the same calls."""
    trace = open_trace(path)
    windows, syncs = trace_windows(trace), trace.sync_events()
    calls = trace.api_calls(with_names=True)
    expected = host_view(windows, calls, syncs)
    for rows in sizes:
        assert_frame_equal(stream(windows, syncs, trace, trace.api_call_batches(rows)), expected)
    start = max(calls.height // 2 - SLICE_CALLS // 2, 0)
    expected = host_view(windows, calls.slice(start, SLICE_CALLS), syncs)
    read = name_ids(calls, trace).slice(start, SLICE_CALLS)
    for rows in tiny:
        assert_frame_equal(stream(windows, syncs, trace, batches(read, rows)), expected)


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name.split(".")[0])
def test_committed_traces(path: Path) -> None:
    assert_stream_equal(path, LARGE, TINY)


def test_a_small_trace_in_batches_of_three_calls_read_from_the_table() -> None:
    trace = open_trace(DATA / "h100_probes" / "probe_threads.sqlite")  # two threads
    windows, syncs = trace_windows(trace), trace.sync_events()
    expected = host_view(windows, trace.api_calls(with_names=True), syncs)
    parts = list(trace.api_call_batches(3))
    assert all(0 < p.height <= 3 for p in parts)
    assert_frame_equal(stream(windows, syncs, trace, parts), expected)


def test_a_generated_trace(tmp_path: Path) -> None:
    path = tmp_path / "gen.sqlite"
    generate(path, 20_000, 0)
    assert_stream_equal(path, (64, *LARGE), (1, 3))


@pytest.fixture(scope="module")
def llama_small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tests/data/llama_small's SQLite and `--type arrow` exports of one capture, unpacked."""
    root = tmp_path_factory.mktemp("llama_small")
    out = {}
    for kind, name in (("sqlite", "llama_small.sqlite"), ("arrow", "llama_small.arrows")):
        out[kind] = root / name
        out[kind].write_bytes(lzma.decompress((DATA / "llama_small" / f"{name}.xz").read_bytes()))
    return out


def test_parquet_and_arrow_twins_give_the_sqlite_view(llama_small: dict[str, Path]) -> None:
    twins = [
        (REPO / "traces" / "llama_1b_shape.sqlite.xz", DATA / "llama_parquet"),
        (llama_small["sqlite"], llama_small["arrow"]),
    ]
    for sqlite_path, twin_path in twins:
        sqlite, twin = open_trace(sqlite_path), open_trace(twin_path)
        windows, syncs = trace_windows(sqlite), sqlite.sync_events()
        expected = host_view(windows, sqlite.api_calls(with_names=True), syncs)
        assert_frame_equal(twin.sync_events(), syncs)
        for rows in (64, *LARGE):
            parts = list(twin.api_call_batches(rows))
            assert all(0 < p.height <= rows for p in parts)
            assert_frame_equal(pl.concat(parts), pl.concat(sqlite.api_call_batches(rows)))
            assert_frame_equal(stream(windows, twin.sync_events(), twin, parts), expected)


def test_batches_are_the_api_calls_with_their_name_ids() -> None:
    trace = open_trace(DATA / "h100_probes" / "probe_2proc.sqlite")
    calls = trace.api_calls(with_names=True)
    parts = list(trace.api_call_batches(100))
    assert len(parts) >= calls.height / 100 and all(0 < p.height <= 100 for p in parts)
    read = pl.concat(parts)
    assert read.schema == HOST_CALL_BATCH_SCHEMA
    assert_frame_equal(read.drop("name_id"), trace.api_calls())
    assert trace.resolve_strings(read["name_id"]).to_list() == calls["name"].to_list()


def test_an_api_table_out_of_start_order_stops_the_read(tmp_path: Path) -> None:
    runtime = "CUPTI_ACTIVITY_KIND_RUNTIME"
    later = "start = start + 10000000000, end = end + 10000000000"
    probe = DATA / "h100_probes" / "probe_threads.sqlite"
    late = mutated(probe, tmp_path / "t.sqlite", f"UPDATE {runtime} SET {later} WHERE rowid = 30")
    with pytest.raises(UnorderedTableError, match=f"table {runtime} is not stored in start order"):
        list(open_trace(late).api_call_batches(1000))
    assert open_trace(late).api_calls().height == 1356  # the whole frame still reads
    shuffled = tmp_path / "p"
    shutil.copytree(DATA / "llama_parquet", shuffled)
    table = shuffled / f"{runtime}.parquet"
    pl.read_parquet(table).reverse().write_parquet(table)
    with pytest.raises(UnorderedTableError, match=f"{runtime} is not stored"):
        list(open_trace(shuffled).api_call_batches(1_000_000))


# --- hand-built frames -------------------------------------------------------------------------


class Names:
    """API names as StringIds ids, resolved as `Trace.resolve_strings` does."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def id_of(self, name: str) -> int:
        return self.ids.setdefault(name, 10 + 3 * len(self.ids))

    def resolve(self, ids: pl.Series) -> pl.Series:
        names = {v: k for k, v in self.ids.items()}
        return pl.Series("value", [names.get(i) for i in ids.to_list()], dtype=pl.String)


def calls(*rows: tuple[int, str, int, int, int]) -> pl.DataFrame:
    """API calls as (global_tid, name, start, end, correlation id), in the order given."""
    keys = ("global_tid", "name", "start_ns", "end_ns", "correlation_id")
    out = [dict(zip(keys, r, strict=True)) | {"global_pid": gpid()} for r in rows]
    return pl.DataFrame(out, schema=CALLS_SCHEMA)


def windows(*rows: tuple[int, int, int, int]) -> pl.DataFrame:
    """Windows as (window id, global_tid, start, end)."""
    keys = ("window_id", "global_tid", "start_ns", "end_ns")
    out = [dict(zip(keys, r, strict=True)) for r in rows]
    return pl.DataFrame(out, schema=dict.fromkeys(keys, pl.Int64))


def syncs(*correlation_ids: int) -> pl.DataFrame:
    rows = [{"global_pid": gpid(), "correlation_id": c} for c in correlation_ids]
    return pl.DataFrame(rows, schema=SYNCS_SCHEMA)


def streamed(
    win: pl.DataFrame, api: pl.DataFrame, sync: pl.DataFrame | None, rows: int
) -> pl.DataFrame:
    """The stream over `api` in batches of `rows` (export order: by start, ties as given)."""
    names = Names()
    read = api.with_columns(
        name_id=pl.Series([names.id_of(n) for n in api["name"].to_list()], dtype=pl.Int64)
    ).select(HOST_CALL_BATCH_SCHEMA.names())
    return HostViewStream(win, sync, names.resolve).add_all(batches(read, rows)).result()


def assert_every_batch_size(
    win: pl.DataFrame, api: pl.DataFrame, sync: pl.DataFrame | None
) -> pl.DataFrame:
    """The stream equals `host_view` at every batch size; returns the view."""
    expected = host_view(win, api, sync)
    for rows in range(1, api.height + 2):
        assert_frame_equal(streamed(win, api, sync, rows), expected)
    return expected


def values(view: pl.DataFrame, window_id: int) -> dict[str, Any]:
    row = view.filter(pl.col("window_id") == window_id).row(0, named=True)
    return {k: v for k, v in row.items() if k != "window_id"}


def test_at_equal_starts_the_enclosing_call_comes_first_across_a_border() -> None:
    # export order is start order only: the short call is listed before the long one it sits
    # in; the launch [100, 300) encloses the copy [100, 150), which counts as nested
    api = calls(
        (MAIN, "cudaMemcpy_v3020", 100, 150, 1),
        (MAIN, "cudaLaunchKernel_v7000", 100, 300, 2),
        (MAIN, "cudaMalloc_v3020", 400, 500, 3),
    )
    view = assert_every_batch_size(windows((1, MAIN, 0, 1_000)), api, None)
    assert values(view, 1) == {
        "span_ns": 1000.0, "launch_ns": 200.0, "sync_ns": 0.0, "other_api_ns": 100.0,
        "outside_api_ns": 700.0, "n_launches": 1.0, "n_syncs": 0.0, "n_memcpy": 0.0,
    }  # fmt: skip


def test_equal_calls_keep_their_order() -> None:
    # two calls of one interval: the first listed is the outermost and owns the time
    api = calls(
        (MAIN, "cudaStreamSynchronize_v3020", 100, 200, 1),
        (MAIN, "cudaLaunchKernel_v7000", 100, 200, 2),
    )
    view = assert_every_batch_size(windows((1, MAIN, 0, 300)), api, syncs(1, 1, 1))
    assert (values(view, 1)["sync_ns"], values(view, 1)["n_launches"]) == (100.0, 0.0)
    assert values(view, 1)["n_syncs"] == 3.0


def test_a_nested_call_crossing_a_batch_border() -> None:
    # an outer call [0, 1000) and, in later batches, a launch inside it and a sync that starts
    # inside it and ends after it: only the sync's part after 1000 is its own
    api = calls(
        (MAIN, "cudaMalloc_v3020", 0, 1_000, 1),
        (WORKER, "cudaLaunchKernel_v7000", 50, 60, 2),
        (MAIN, "cudaLaunchKernel_v7000", 100, 200, 3),
        (MAIN, "cudaStreamSynchronize_v3020", 300, 1_500, 4),
        (OTHER_THREAD, "cudaDeviceSynchronize_v3020", 400, 5_000, 5),
        (MAIN, "cudaLaunchKernel_v7000", 1_600, 1_700, 6),
    )
    win = windows((1, MAIN, 0, 2_000), (2, MAIN, 150, 1_200), (3, WORKER, 0, 100),
                  (4, MAIN, 1_550, 1_650))  # fmt: skip
    view = assert_every_batch_size(win, api, syncs(4, 4))
    assert values(view, 1) == {
        "span_ns": 2000.0, "launch_ns": 100.0, "sync_ns": 500.0, "other_api_ns": 1000.0,
        "outside_api_ns": 400.0, "n_launches": 1.0, "n_syncs": 2.0, "n_memcpy": 0.0,
    }  # fmt: skip
    assert values(view, 2) == {
        "span_ns": 1050.0, "launch_ns": 0.0, "sync_ns": 200.0, "other_api_ns": 850.0,
        "outside_api_ns": 0.0, "n_launches": 0.0, "n_syncs": 2.0, "n_memcpy": 0.0,
    }  # fmt: skip
    assert values(view, 3)["launch_ns"] == 10.0 and values(view, 3)["n_launches"] == 1.0
    assert values(view, 4)["launch_ns"] == 50.0 and values(view, 4)["n_launches"] == 1.0
    # without synchronization rows the outermost synchronizing calls count
    no_rows = assert_every_batch_size(win, api, None)
    assert values(no_rows, 2)["n_syncs"] == 0.0 and values(no_rows, 1)["n_syncs"] == 0.0
    assert_frame_equal(no_rows, assert_every_batch_size(win, api, syncs()))


def test_a_stream_waiting_on_an_event_is_not_a_host_sync() -> None:
    api = calls(
        (MAIN, "cudaStreamWaitEvent_v3020", 10, 20, 1),
        (MAIN, "cudaMemcpyAsync_v3020", 30, 40, 2),
        (MAIN, "cudaMemcpy_v3020", 50, 70, 3),
        (MAIN, "cuLaunchKernel", 80, 90, 4),
    )
    view = assert_every_batch_size(windows((1, MAIN, 0, 100)), api, syncs(1, 2, 3))
    assert values(view, 1) == {
        "span_ns": 100.0, "launch_ns": 10.0, "sync_ns": 30.0, "other_api_ns": 10.0,
        "outside_api_ns": 50.0, "n_launches": 1.0, "n_syncs": 2.0, "n_memcpy": 2.0,
    }  # fmt: skip


def test_no_windows_and_no_calls() -> None:
    api = calls((MAIN, "cudaLaunchKernel_v7000", 10, 20, 1))
    assert assert_every_batch_size(windows(), api, None).is_empty()
    view = assert_every_batch_size(windows((1, WORKER, 0, 50)), api, syncs(1))
    assert values(view, 1)["outside_api_ns"] == 50.0
    assert_frame_equal(streamed(windows((1, MAIN, 0, 50)), api.clear(), None, 1),
                       host_view(windows((1, MAIN, 0, 50)), api.clear(), None))  # fmt: skip


def test_batches_out_of_start_order_are_refused() -> None:
    names = Names()
    api = calls(
        (MAIN, "cudaLaunchKernel_v7000", 10, 20, 1), (MAIN, "cudaLaunchKernel_v7000", 30, 40, 2)
    ).with_columns(name_id=pl.lit(names.id_of("cudaLaunchKernel_v7000"), pl.Int64))
    read = api.select(HOST_CALL_BATCH_SCHEMA.names())
    host = HostViewStream(windows((1, MAIN, 0, 50)), None, names.resolve)
    with pytest.raises(StreamOrderError, match="a call starting at 10 ns follows a later one"):
        host.add(read.reverse())
    host.add(read.slice(1))
    with pytest.raises(StreamOrderError, match="a call starting at 10 ns follows a later one"):
        host.add(read.slice(0, 1))
    host.result()
    with pytest.raises(StreamOrderError, match="after the host view's result"):
        host.add(read.slice(1))


# --- random nested calls -----------------------------------------------------------------------

NAMES: Final = (
    "cudaLaunchKernel_v7000", "cuLaunchKernelEx", "cudaGraphLaunch_v10000",
    "cudaStreamSynchronize_v3020", "cudaMemcpy_v3020", "cudaMemcpyAsync_v3020",
    "cudaStreamWaitEvent_v3020", "cuKernelGetName", "cudaMalloc_v3020",
)  # fmt: skip


@st.composite
def nested_calls(draw: st.DrawFn) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """Calls on three threads, starts drawn from few values (ties), nested or overlapping
    intervals, in start order with ties in any order; windows on two of the threads; maybe
    synchronization rows, some calls with several."""
    n = draw(st.integers(0, 40))
    rows = [
        (
            draw(st.sampled_from([MAIN, WORKER, OTHER_THREAD])),
            draw(st.sampled_from(NAMES)),
            start := draw(st.integers(0, 40)) * 25,
            start + draw(st.sampled_from([0, 5, 25, 100, 400])),
            100 + i,
        )
        for i in range(n)
    ]
    rows = sorted(rows, key=lambda r: r[2])  # stable: ties stay in drawn order
    win = [
        (w, draw(st.sampled_from([MAIN, WORKER])), a := draw(st.integers(0, 1_100)),
         a + draw(st.integers(0, 600)))
        for w in range(draw(st.integers(0, 6)))
    ]  # fmt: skip
    sync = None
    if draw(st.booleans()):
        sync = syncs(*draw(st.lists(st.integers(95, 100 + n), max_size=12)))
    return calls(*rows), windows(*win), sync


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nested_calls(), st.sampled_from([1, 2, 3, 7, WHOLE]))
def test_random_nested_calls_at_any_batch_size(
    case: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None], rows: int
) -> None:
    api, win, sync = case
    assert_frame_equal(streamed(win, api, sync, rows), host_view(win, api, sync))
