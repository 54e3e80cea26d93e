"""D9, D10: a trace whose ranges are all open finishes in seconds; signals stop a run at once and
every exit path removes the decompressed temporaries; decompression stops at a size cap."""

from __future__ import annotations

import gzip
import lzma
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import llm_perf_opt.trace.files as trace_files
from llm_perf_opt.trace import DECOMPRESS_CAP_ENV, MAX_OPEN_RANGES_PER_THREAD, open_trace
from tests.helpers.committed import PROBE, V1_XZ
from tests.helpers.contract import analyze, assert_error, assert_ok, scratch_left
from tests.helpers.mutate import mutated
from tests.helpers.paths import SRC

V1_T32_XZ = V1_XZ.with_name("dsocr_v1_base_t32.sqlite.xz")


def test_d9_all_ranges_open_finishes_in_seconds(v1_plain: Path, tmp_path: Path) -> None:
    trace = mutated(v1_plain, tmp_path / "open.sqlite", "UPDATE NVTX_EVENTS SET end = NULL")
    start = time.monotonic()
    line = assert_error(analyze(trace, "--format", "json"), "never ended")
    assert time.monotonic() - start < 60
    assert "5989 open NVTX ranges" in line


def test_d9_a_few_open_ranges_still_end_at_the_trace_end(tmp_path: Path) -> None:
    trace = mutated(
        PROBE, tmp_path / "t.sqlite", "UPDATE NVTX_EVENTS SET end = NULL WHERE rowid = 3"
    )
    opened = open_trace(trace)
    ranges = opened.nvtx_ranges()
    row = ranges.filter(ranges["event_id"] == 3)
    assert row["closed"].to_list() == [False]
    assert row["end_ns"].to_list() == [opened.trace_end_ns]
    assert opened.warnings == []
    assert MAX_OPEN_RANGES_PER_THREAD >= 8  # a capture cut mid-run leaves a few per thread


def _start(args: list[str], tmpdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "TMPDIR": str(tmpdir)}
    return subprocess.Popen(
        [sys.executable, "-m", "llm_perf_opt.cli.analyze", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


@pytest.mark.parametrize(
    ("signum", "delay_s"),
    [
        (signal.SIGINT, 0.0),  # while decompressing
        (signal.SIGTERM, 0.0),
        (signal.SIGHUP, 0.0),
        (signal.SIGINT, 0.8),  # later: reading, attributing or plotting (2-3 s in all)
    ],
)
def test_d10_signals_stop_promptly_and_remove_temporaries(
    tmp_path: Path, signum: signal.Signals, delay_s: float
) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "r.csv"
    args = [str(V1_T32_XZ), "--format", "json", "--ranges-out", str(out), "--plots", str(tmp_path)]
    proc = _start(args, tmpdir)
    deadline = time.monotonic() + 60
    while not scratch_left(tmpdir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert scratch_left(tmpdir), "the decompressed copy never appeared"
    time.sleep(delay_s)
    if proc.poll() is not None:
        proc.communicate()
        pytest.fail("the run ended before the signal")
    sent = time.monotonic()
    proc.send_signal(signum)
    code = proc.wait(timeout=30)
    elapsed = time.monotonic() - sent
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert code == 128 + signum, err
    assert elapsed < 2.0, elapsed
    assert (
        err.strip().splitlines()[-1]
        == f"Error: stopped by {signum.name}; unfinished outputs removed"
    )
    assert list(tmpdir.iterdir()) == []
    if delay_s == 0:
        assert not out.exists()


def test_d10_temporaries_removed_on_success_and_on_errors(
    tmp_path: Path, scratch_tmp: Path
) -> None:
    packed = tmp_path / "t.sqlite.xz"
    packed.write_bytes(lzma.compress(PROBE.read_bytes()))
    assert_ok(analyze(packed, "--ranges-out", tmp_path / "r.csv"))
    assert scratch_left(scratch_tmp) == []
    assert_error(analyze(packed, "--stage", "vision=nothing", "--format", "json"), "nothing")
    assert scratch_left(scratch_tmp) == []
    cut = tmp_path / "cut.sqlite.gz"
    cut.write_bytes(gzip.compress(PROBE.read_bytes())[:5000])
    assert_error(analyze(cut), "cannot be decompressed")
    assert scratch_left(scratch_tmp) == []
    junk = tmp_path / "junk.sqlite.xz"
    junk.write_bytes(lzma.compress(b"not sqlite at all" * 100))
    assert_error(analyze(junk), "not an SQLite file")
    assert scratch_left(scratch_tmp) == []


def test_d10_decompression_size_cap(
    tmp_path: Path, scratch_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "bomb.sqlite.xz"
    bomb.write_bytes(lzma.compress(b"SQLite format 3\x00" + bytes(64 << 20)))
    assert bomb.stat().st_size < 20_000
    # the floor (1 GiB by default) lowered so that the ratio cap is what stops this bomb
    monkeypatch.setattr(trace_files, "DECOMPRESS_FLOOR_BYTES", 1 << 20)
    cap = trace_files.decompress_cap(bomb.stat().st_size)
    assert cap == max(1 << 20, trace_files.DECOMPRESS_RATIO_CAP * bomb.stat().st_size)
    line = assert_error(analyze(bomb), f"decompresses to more than {cap:,} bytes")
    assert DECOMPRESS_CAP_ENV in line
    assert scratch_left(scratch_tmp) == []
    monkeypatch.setenv(DECOMPRESS_CAP_ENV, "100000")
    packed = tmp_path / "t.sqlite.xz"
    packed.write_bytes(lzma.compress(PROBE.read_bytes()))
    assert_error(analyze(packed), "more than 100,000 bytes")
    monkeypatch.setenv(DECOMPRESS_CAP_ENV, str(10 << 20))
    assert_ok(analyze(packed, "--ranges-out", tmp_path / "r.csv"))
    monkeypatch.setenv(DECOMPRESS_CAP_ENV, "lots")
    assert_error(analyze(packed), DECOMPRESS_CAP_ENV)
    assert scratch_left(scratch_tmp) == []


def test_d10_free_space_is_checked_before_decompressing(
    tmp_path: Path, scratch_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    packed = tmp_path / "t.sqlite.xz"
    raw = PROBE.read_bytes()
    packed.write_bytes(lzma.compress(raw))
    assert trace_files._xz_declared_size(packed) == len(raw)  # the xz index, read up front
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**6, 10**6 - 1000, 1000))
    line = assert_error(analyze(packed), f"needs at least {len(raw):,} bytes")
    assert "TMPDIR" in line and "has 1,000 free" in line
    assert scratch_left(scratch_tmp) == []
    gz = tmp_path / "t.sqlite.gz"  # no declared size: stopped once the copy passes the free space
    gz.write_bytes(gzip.compress(raw))
    assert_error(analyze(gz), "bytes but")
    assert scratch_left(scratch_tmp) == []


def test_d10_ctrl_c_during_a_query_reaches_the_process_handler(v1_plain: Path) -> None:
    """The ADBC driver manager holds SIGINT while a query runs and turns it into a failed
    cancel (NOT_IMPLEMENTED from a KeyboardInterrupt): the reader hands the signal back to the
    process's handler instead of calling the trace damaged."""
    import threading

    import polars as pl

    from llm_perf_opt.trace.sqlite import SqliteTrace

    trace = open_trace(v1_plain)
    assert isinstance(trace, SqliteTrace)
    slow = (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 20000000) "
        "SELECT count(*) AS n FROM r"
    )
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
            trace._frame(slow, {"n": pl.Int64()})
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert received == [signal.SIGINT]
