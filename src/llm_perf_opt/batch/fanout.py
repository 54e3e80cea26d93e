"""Analyze traces one by one, in this process, in local worker processes or on Dask.

`analyze_one` never raises for a bad trace: it returns a `RunResult` holding the report (plain
dataclasses, no frames) or the error line, so one bad trace in a sweep does not stop the others.
`iter_results` fans the traces out: `-j N` spawned worker processes, one trace each at a time
over a pipe, that end with their command (a signal ends them first; a worker whose command was
killed ends itself) and whose death fails only the trace they held; or a `dask.distributed`
scheduler, probed for its handshake before anything is sent and watched for workers while the
traces are pending (docs/many-runs.md).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.batch.resultsdb import RunRecord, RunRows, record_of, rows_from_report
from llm_perf_opt.batch.stopping import on_stop, stop, stop_on_signals
from llm_perf_opt.errors import DaskError, LlmPerfOptError
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.trace import remove_scratch_of

DASK_ENV: Final = "DASK_SCHEDULER_ADDRESS"
# Seconds to wait for a Dask scheduler (connection and handshake) before giving up.
DASK_CONNECT_TIMEOUT_S: Final = 20
# A scheduler's handshake is a few dozen bytes; a longer frame is another protocol's bytes.
MAX_HANDSHAKE_BYTES: Final = 1 << 16
# Seconds between checks that a Dask scheduler still has workers, and how long it may have
# none before the traces left are failed (a cluster whose workers all died never finishes).
DASK_POLL_S: Final = 1.0
DASK_NO_WORKER_S: Final = 30.0
# Seconds a worker process is given to exit (and a worker its parent is polled every).
WORKER_EXIT_S: Final = 3.0
PARENT_POLL_S: Final = 0.5


@dataclass(frozen=True)
class RunResult:
    """One trace's outcome: its record and report, or the error that stopped it."""

    trace: str
    record: RunRecord | None = None
    report: MfuReport | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def rows(self) -> RunRows:
        assert self.record is not None and self.report is not None, "rows of a failed run"
        return rows_from_report(self.record, self.report)


def analyze_one(path: str | Path, options: AnalyzeOptions) -> RunResult:
    """Analyze one trace; every failure becomes the result's error line (never raised), so one
    bad trace in a sweep does not stop the others."""
    started = time.perf_counter()
    try:
        analysis = analyze_trace(path, options)
        assert analysis.report is not None  # require_mfu=True raises instead
        record = record_of(path, options, analysis.meta, time.perf_counter() - started)
    except LlmPerfOptError as exc:
        return RunResult(str(path), error=str(exc))
    except Exception as exc:  # a bug must not sink a sweep of hundreds of traces either
        return RunResult(str(path), error=f"internal error {type(exc).__name__}: {exc}")
    return RunResult(str(path), record, analysis.report)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_jobs() -> int:
    return cpu_count()


def worker_count(jobs: int | None, n_traces: int) -> tuple[int, str | None]:
    """Local worker processes for `n_traces`: `jobs` (default: the CPUs), capped at the traces
    and the CPUs, with a note when a `-j` given was lowered."""
    cap = min(cpu_count(), max(n_traces, 1))
    if jobs is None:
        return cap, None
    if jobs <= cap:
        return jobs, None
    return cap, f"note: -j {jobs} lowered to {cap} ({n_traces} trace(s), {cpu_count()} CPU(s))"


def iter_results(
    paths: Sequence[str | Path],
    options: AnalyzeOptions,
    *,
    jobs: int | None = None,
    dask_address: str | None = None,
) -> Iterator[tuple[int, RunResult]]:
    """(index in `paths`, result) of every trace as it completes: in this process (`jobs` 1),
    in `jobs` local processes (default and cap: the CPUs and the traces), or on the Dask
    scheduler at `dask_address`. A worker that dies fails its trace; the others go on.

    Raises:
        DaskError: dask.distributed is missing or the scheduler does not answer.
    """
    if dask_address is not None:
        yield from _dask_results(paths, options, dask_address)
        return
    n_jobs, _ = worker_count(jobs, len(paths))
    if n_jobs <= 1:
        for i, path in enumerate(paths):
            yield i, analyze_one(path, options)
        return
    with _Workers(n_jobs, options) as workers:
        yield from workers.run(paths)


def _worker_main(conn: Connection, options: AnalyzeOptions, parent: int) -> None:
    """A worker process: analyze the traces the parent sends, one at a time, until it sends
    None or goes away; a signal (or the parent's death) removes this process's temporaries."""
    with stop_on_signals(loud=False):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError):
                return
            if task is None:
                return
            i, path = task
            conn.send((i, analyze_one(path, options)))


def _watch_parent(parent: int) -> None:
    """Stop this worker when its parent is gone (killed without a chance to end it)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    stop(signal.SIGTERM)


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    task: tuple[int, str | Path] | None = None


class _Workers:
    """Spawned worker processes (spawn, not fork: polars' thread pool must not be forked
    mid-flight), one trace each at a time, sent over a pipe. Unlike a process pool, a worker
    that dies (killed, out of memory) fails only its own trace and is replaced; a signal that
    stops the command ends every worker first (`stopping.on_stop`), and leaving the block
    ends them too."""

    def __init__(self, n: int, options: AnalyzeOptions) -> None:
        self.n = n
        self.options = options
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []
        self._stop_hook = on_stop(self.close)

    def __enter__(self) -> _Workers:
        self._stop_hook.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        finally:
            self._stop_hook.__exit__(None, None, None)

    def _start(self) -> _Worker:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(
            target=_worker_main, args=(theirs, self.options, os.getpid()), daemon=True
        )
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        self.workers.append(worker)
        return worker

    def run(self, paths: Sequence[str | Path]) -> Iterator[tuple[int, RunResult]]:
        pending = list(enumerate(paths))[::-1]
        for _ in range(min(self.n, len(paths))):
            self._start()
        while pending or any(w.task is not None for w in self.workers):
            for worker in list(self.workers):
                if worker.task is None and pending:
                    worker.task = pending.pop()
                    try:
                        worker.conn.send(worker.task)
                    except (OSError, ValueError):  # it died idle: the trace fails, not the rest
                        yield self._dead(worker, bool(pending))
            busy = [w for w in self.workers if w.task is not None]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.conn in ready:
                    try:
                        i, result = worker.conn.recv()
                    except (EOFError, OSError):
                        pass  # died while sending: handled as a death below
                    else:
                        worker.task = None
                        yield i, result
                        continue
                if worker.process.sentinel in ready or not worker.process.is_alive():
                    yield self._dead(worker, bool(pending))

    def _dead(self, worker: _Worker, more: bool) -> tuple[int, RunResult]:
        """The failed result of a dead worker's trace; its temporaries removed, and a new
        worker started when traces remain."""
        assert worker.task is not None
        worker.process.join(timeout=1)
        code = worker.process.exitcode
        remove_scratch_of(worker.process.pid or 0)
        self.workers.remove(worker)
        worker.conn.close()
        if more:
            self._start()
        i, path = worker.task
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
        return i, RunResult(
            str(path),
            error=f"the worker process analyzing it died ({how}: killed, or out of memory); "
            "the other traces went on",
        )

    def close(self) -> None:
        """End every worker: ask it to stop, then SIGTERM (it removes its temporaries), then
        SIGKILL; remove what a killed one left."""
        for worker in self.workers:
            with suppress(OSError, ValueError):
                worker.conn.send(None)
        deadline = time.monotonic() + WORKER_EXIT_S
        for worker in self.workers:
            if worker.task is not None:
                worker.process.terminate()
        for worker in self.workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=WORKER_EXIT_S)
            remove_scratch_of(worker.process.pid or 0)
            worker.conn.close()
        self.workers.clear()


def analyze_many(
    paths: Sequence[str | Path],
    options: AnalyzeOptions,
    *,
    jobs: int | None = None,
    dask_address: str | None = None,
) -> list[RunResult]:
    """`iter_results` collected in the order of `paths`."""
    done = dict(iter_results(paths, options, jobs=jobs, dask_address=dask_address))
    return [done[i] for i in range(len(paths))]


def _scheduler_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a tcp:// scheduler address (also without scheme), None for another
    protocol (tls://, inproc://: not probed).

    Raises:
        DaskError: the address cannot be a scheduler's.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    bad = DaskError(
        f"{address!r} is not a Dask scheduler address; write tcp://HOST:PORT (--dask or {DASK_ENV})"
    )
    try:
        scheme, location = parse_address(address)
    except (ValueError, TypeError):
        raise bad from None
    if scheme != "tcp":
        return None
    try:
        host, port = parse_host_port(location)
    except (ValueError, TypeError):
        raise bad from None
    if not host or not 0 < int(port) < 1 << 16:
        raise bad
    return host, int(port)


def probe_scheduler(address: str, timeout_s: float | None = None) -> None:
    """Connect to a tcp:// scheduler and read the handshake it sends first, within
    `timeout_s` in all: a plain TCP listener, an HTTP server or a dead port is an error here
    instead of a hang (or of a frame length read from another protocol's bytes).

    Raises:
        DaskError: no connection, no handshake in time, or not a Dask handshake.
    """
    where = _scheduler_host_port(address)
    if where is None:
        return
    timeout_s = DASK_CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    fix = f"start one (`dask scheduler`) or fix --dask / {DASK_ENV}"
    try:
        with socket.create_connection(where, timeout=timeout_s) as conn:
            head = _recv_exactly(conn, 8, deadline)
            (length,) = struct.unpack("<Q", head)
            if not 16 <= length <= MAX_HANDSHAKE_BYTES:
                raise DaskError(f"{address!r} answers but is not a Dask scheduler; {fix}")
            body = _recv_exactly(conn, length, deadline)
    except TimeoutError:
        raise DaskError(
            f"{address!r} sent no Dask handshake within {timeout_s:g} s (not a Dask scheduler, "
            f"or not answering); {fix}"
        ) from None
    except OSError as exc:
        raise DaskError(
            f"no Dask scheduler answers at {address!r} ({exc.strerror or exc}); {fix}"
        ) from None
    if b"pickle-protocol" not in body:
        raise DaskError(f"{address!r} answers but is not a Dask scheduler; {fix}")


def _recv_exactly(conn: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        conn.settimeout(left)
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "the connection was closed")
        data += chunk
    return data


def _dask_results(
    paths: Sequence[str | Path], options: AnalyzeOptions, address: str
) -> Iterator[tuple[int, RunResult]]:
    try:
        from distributed import Client
        from distributed import wait as dask_wait
    except ImportError as exc:
        raise DaskError("--dask needs dask.distributed: pip install 'llm-perf-opt[dask]'") from exc
    probe_scheduler(address)
    try:
        client = Client(  # type: ignore[no-untyped-call]
            address, timeout=DASK_CONNECT_TIMEOUT_S
        )
    except (OSError, TimeoutError) as exc:
        raise DaskError(
            f"no Dask scheduler answers at {address!r} ({exc}); start one (`dask scheduler`) "
            f"or fix --dask / {DASK_ENV}"
        ) from exc
    with client, on_stop(lambda: client.close(timeout=WORKER_EXIT_S)):  # type: ignore[no-untyped-call]
        # absolute paths: the workers may run in other directories (shared filesystem)
        futures = client.map(
            analyze_one, [str(Path(p).resolve()) for p in paths], options=options, pure=False
        )
        index = {f.key: i for i, f in enumerate(futures)}
        pending = set(futures)
        idle_since: float | None = None
        while pending:
            try:
                done, pending = dask_wait(  # type: ignore[no-untyped-call]
                    list(pending), timeout=DASK_POLL_S, return_when="FIRST_COMPLETED"
                )
            except TimeoutError:
                done = set()
            for future in done:
                i = index[future.key]
                yield i, _as_given(paths[i], future)
            if done or client.nthreads():  # type: ignore[no-untyped-call]
                idle_since = None
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since < DASK_NO_WORKER_S:
                continue
            client.cancel(list(pending))  # type: ignore[no-untyped-call]
            for future in pending:
                i = index[future.key]
                yield (
                    i,
                    RunResult(
                        str(paths[i]),
                        error=f"no Dask worker was left to analyze it for {DASK_NO_WORKER_S:g} s "
                        f"(the scheduler at {address} has none); start workers and run again",
                    ),
                )
            return


def _as_given(given_path: str | Path, future: Any) -> RunResult:
    """A future's result with the trace path as given (as a local run reports it); a task
    that failed on the cluster (a worker killed under it) is that trace's error."""
    given = str(given_path)
    try:
        result: RunResult = future.result()
    except Exception as exc:  # KilledWorker, CancelledError, a worker's own failure
        return RunResult(given, error=f"the Dask task failed ({type(exc).__name__}: {exc})")
    return RunResult(
        given,
        None if result.record is None else replace(result.record, trace_path=given),
        None if result.report is None else replace(result.report, trace_path=given),
        result.error,
    )
