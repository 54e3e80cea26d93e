"""D11, D12, D14, D15: locked, unreadable, WAL-mode and non-regular inputs: one clear line each,
the input untouched, nothing created beside it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.committed import PROBE, V1_META
from tests.helpers.contract import analyze, assert_error, assert_ok
from tests.helpers.mutate import digest, mutated

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE StringIds SET value = value WHERE id = 1")
print("locked", flush=True)
time.sleep(60)
"""


def test_d11_lock_held_by_another_process(tmp_path: Path) -> None:
    trace = mutated(PROBE, tmp_path / "t.sqlite")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(trace)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        assert_error(
            analyze(trace, "--ranges-out", tmp_path / "r.csv"), "locked by another process"
        )
        assert time.monotonic() - start < 30
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert_ok(analyze(trace, "--ranges-out", tmp_path / "r.csv"))  # free again: it reads


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_d12_permission_denied(tmp_path: Path) -> None:
    trace = mutated(PROBE, tmp_path / "t.sqlite")
    trace.chmod(0)
    meta = tmp_path / "run.meta.json"
    meta.write_bytes(V1_META.read_bytes())
    meta.chmod(0)
    try:
        assert_error(analyze(trace), "permission denied")
        assert_error(
            analyze(PROBE, "--meta", meta, "--ranges-out", tmp_path / "r.csv"), "cannot be read"
        )
    finally:
        trace.chmod(0o600)
        meta.chmod(0o600)


def test_d12_unreadable_parent_folder_is_one_line(tmp_path: Path) -> None:
    # a path through a regular file fails in stat() for every user, root included
    assert_error(analyze(PROBE / "inside.sqlite"), "cannot be read")
    assert_error(
        analyze(PROBE, "--meta", PROBE / "m.json", "--ranges-out", tmp_path / "r.csv"),
        "cannot be read",
    )


def test_d14_wal_mode_trace_gets_no_wal_or_shm_files(tmp_path: Path) -> None:
    trace = mutated(PROBE, tmp_path / "t.sqlite")
    conn = sqlite3.connect(trace)
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.sqlite"]
    before = digest(trace)
    out = tmp_path / "out"
    out.mkdir()
    assert_ok(analyze(trace, "--ranges-out", out / "r.csv"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "t.sqlite"]
    assert digest(trace) == before
    plain = out / "plain.csv"
    assert_ok(analyze(PROBE, "--ranges-out", plain))
    assert (out / "r.csv").read_text() == plain.read_text()


def test_d14_wal_with_pending_changes_is_refused(tmp_path: Path) -> None:
    trace = mutated(PROBE, tmp_path / "t.sqlite")
    writer = sqlite3.connect(trace)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE pending (x)")
    writer.execute("INSERT INTO pending VALUES (1)")
    writer.commit()  # the change sits in t.sqlite-wal while the writer stays open
    try:
        assert (tmp_path / "t.sqlite-wal").stat().st_size > 0
        assert_error(analyze(trace, "--ranges-out", tmp_path / "r.csv"), "WAL mode")
    finally:
        writer.close()


def test_d15_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "trace.sqlite"
    os.mkfifo(fifo)
    start = time.monotonic()
    assert_error(analyze(fifo), "not a regular file")
    meta_fifo = tmp_path / "meta.json"
    os.mkfifo(meta_fifo)
    assert_error(
        analyze(PROBE, "--meta", meta_fifo, "--ranges-out", tmp_path / "r.csv"),
        "not a regular file",
    )
    assert time.monotonic() - start < 10  # opening a FIFO for reading would have blocked


def test_d15_device_is_refused(tmp_path: Path) -> None:
    assert_error(analyze("/dev/null"), "not a regular file")
