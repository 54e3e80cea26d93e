"""Worker processes end with their command, a dead worker fails only its trace, and a Dask
address that is not a working scheduler is an error within its timeout, never a hang.

Real processes throughout: `mfu-analyze DIR -j 2` as a subprocess, signalled alone or as a
process group; a worker killed with SIGKILL; a plain TCP listener and an HTTP server on
127.0.0.1; a `dask scheduler` whose only (nanny-less) worker is killed. Every wait is bounded.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import llm_perf_opt.batch.fanout as fanout
import llm_perf_opt.batch.runs as runs
from tests.helpers.contract import analyze, assert_error
from tests.helpers.paths import REPO, SRC

H200_XZ = REPO / "traces" / "dsocr_v1_base_h200.sqlite.xz"
N_TRACES = 4

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def children_of(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(check: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of compressed copies of a real trace (each decompressed by its worker)."""
    root = tmp_path_factory.mktemp("many")
    for i in range(N_TRACES):
        shutil.copyfile(H200_XZ, root / f"h{i}.sqlite.xz")
    return root


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def start(args: list[str], tmpdir: Path, *, group: bool = False) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "TMPDIR": str(tmpdir)}
    return subprocess.Popen(
        [sys.executable, "-m", "llm_perf_opt.cli.analyze", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=group,
    )


def busy_workers(proc: subprocess.Popen[bytes], tmpdir: Path, n: int) -> set[int]:
    """The worker pids, once `n` of them are decompressing (their scratch folder exists)."""

    def working() -> set[int]:
        pids = children_of(proc.pid)
        return {p for p in pids if list(tmpdir.glob(f"mfu-trace-{p}-*"))}

    assert wait_for(lambda: len(working()) >= n), "the workers did not start"
    return children_of(proc.pid)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_command_ends_every_worker(
    traces: Path, tmpdir_env: Path, signum: signal.Signals
) -> None:
    proc = start([str(traces), "-j", "2"], tmpdir_env)
    try:
        pids = busy_workers(proc, tmpdir_env, 2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum
    assert f"stopped by {signum.name}" in err.decode()
    assert wait_for(lambda: not any(alive(p) for p in pids), 10), "a worker outlived the command"
    assert list(tmpdir_env.iterdir()) == []


def test_a_signal_to_the_process_group_leaves_nothing(traces: Path, tmpdir_env: Path) -> None:
    proc = start([str(traces), "-j", "2"], tmpdir_env, group=True)
    try:
        pids = busy_workers(proc, tmpdir_env, 2)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert wait_for(lambda: not any(alive(p) for p in pids), 10)
    assert list(tmpdir_env.iterdir()) == []


def test_workers_end_when_the_command_is_killed_outright(traces: Path, tmpdir_env: Path) -> None:
    proc = start([str(traces), "-j", "2"], tmpdir_env)
    try:
        pids = busy_workers(proc, tmpdir_env, 2)
        proc.kill()  # SIGKILL: the command cannot end them; they notice and end themselves
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert wait_for(lambda: not any(alive(p) for p in pids), 15), "orphaned workers"
    assert wait_for(lambda: not list(tmpdir_env.iterdir()), 5)


def test_a_killed_worker_fails_its_trace_and_the_batch_goes_on(
    traces: Path, tmpdir_env: Path
) -> None:
    proc = start([str(traces), "-j", "2", "--format", "json"], tmpdir_env)
    try:
        busy_workers(proc, tmpdir_env, 1)
        victim = next(p for p in children_of(proc.pid) if list(tmpdir_env.glob(f"mfu-trace-{p}-*")))
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == runs.EXIT_SOME_FAILED, err.decode()
    assert "Traceback" not in err.decode()
    doc = json.loads(out)
    assert doc["n_traces"] == N_TRACES and doc["n_failed"] == 1
    failed = next(t for t in doc["traces"] if not t["ok"])
    assert "worker process analyzing it died (killed by SIGKILL" in failed["error"]
    assert list(tmpdir_env.iterdir()) == []  # the dead worker's copy was removed for it
    assert not children_of(proc.pid)


def test_jobs_are_capped_at_the_traces_and_said(traces: Path) -> None:
    two = [traces / "h0.sqlite.xz", traces / "h1.sqlite.xz"]
    cpus = fanout.cpu_count()
    if cpus < 2:
        pytest.skip("needs 2 CPUs")
    assert fanout.worker_count(64, 2) == (
        2,
        f"note: -j 64 lowered to 2 (2 trace(s), {cpus} CPU(s))",
    )
    assert fanout.worker_count(None, 500)[0] == fanout.cpu_count()
    assert fanout.worker_count(1, 500) == (1, None)
    result = analyze(*two, "-j", "64", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert "-j 64 lowered to 2" in result.stderr


# --- Dask ----------------------------------------------------------------------------------------


@pytest.fixture
def quick_dask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "DASK_CONNECT_TIMEOUT_S", 2.0)
    monkeypatch.setattr(fanout, "DASK_NO_WORKER_S", 2.0)
    monkeypatch.setattr(fanout, "DASK_POLL_S", 0.2)


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP listener on 127.0.0.1 that accepts and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("quick_dask")
@pytest.mark.parametrize("server", ["silent_listener", "http_server"])
def test_dask_at_something_that_is_not_a_scheduler_fails_in_time(
    traces: Path, server: str, request: pytest.FixtureRequest
) -> None:
    address = request.getfixturevalue(server)
    started = time.monotonic()
    assert_error(analyze(traces / "h0.sqlite.xz", "--dask", address), "no Dask handshake")
    assert time.monotonic() - started < 10


@pytest.mark.usefixtures("quick_dask")
@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("tcp://127.0.0.1:1", "no Dask scheduler answers"),
        ("tcp://127.0.0.1:99999", "not a Dask scheduler address"),
        ("tcp://127.0.0.1:http", "not a Dask scheduler address"),
        ("no scheme at all", "not a Dask scheduler address"),
    ],
)
def test_a_bad_dask_address_is_a_clear_error(traces: Path, address: str, fragment: str) -> None:
    assert_error(analyze(traces / "h0.sqlite.xz", "--dask", address), fragment)


@pytest.fixture
def scheduler_without_workers(tmp_path: Path) -> Iterator[str]:
    """A real `dask scheduler` whose only worker (no nanny to restart it) was killed."""
    distributed = pytest.importorskip("distributed")
    dask = shutil.which("dask", path=str(Path(sys.executable).parent))
    if dask is None:
        pytest.skip("the dask command is not installed")
    info = tmp_path / "scheduler.json"
    common = ["--scheduler-file", str(info)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}  # the scheduler unpickles the tasks' functions
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        assert wait_for(info.exists, 60), "the scheduler did not start"
        procs.append(
            subprocess.Popen(
                [dask, "worker", "--no-nanny", "--nthreads", "1", "--no-dashboard", *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        address = json.loads(info.read_text())["address"]
        with distributed.Client(address, timeout=30) as client:
            assert wait_for(lambda: bool(client.nthreads()), 60), "the worker did not join"
            procs[1].kill()
            procs[1].wait(10)
            assert wait_for(lambda: not client.nthreads(), 60), "the scheduler kept the worker"
        yield address
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


@pytest.mark.usefixtures("quick_dask")
def test_a_scheduler_whose_only_worker_died_fails_the_traces_instead_of_waiting(
    traces: Path, scheduler_without_workers: str
) -> None:
    two = [traces / "h0.sqlite.xz", traces / "h1.sqlite.xz"]
    started = time.monotonic()
    result = analyze(*two, "--dask", scheduler_without_workers, "--format", "json")
    assert time.monotonic() - started < 60
    assert result.exit_code == runs.EXIT_SOME_FAILED, result.output
    doc = json.loads(result.stdout)
    assert doc["n_failed"] == 2
    assert all("no Dask worker was left" in t["error"] for t in doc["traces"]), doc


def test_a_signal_forgets_the_dask_futures(traces: Path, tmpdir_env: Path) -> None:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        paths = [str(p) for p in sorted(traces.iterdir())]
        proc = start([*paths, "--dask", cluster.scheduler_address], tmpdir_env)
        try:

            def tasks() -> int:
                return int(
                    client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
                )

            assert wait_for(lambda: tasks() > 0, 60), "the batch sent no task"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 128 + signal.SIGTERM, err.decode()
        assert wait_for(lambda: tasks() == 0, 30), "the scheduler kept the futures"


@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_a_closed_stdout_is_one_error_line(traces: Path, tmpdir_env: Path, command: str) -> None:
    two = [str(traces / "h0.sqlite.xz"), str(traces / "h1.sqlite.xz")]
    args = [two[0], "--", two[1]] if command == "compare" else two
    read, write = os.pipe()
    os.close(read)  # nobody reads: the first write fails with EPIPE
    env = {**os.environ, "PYTHONPATH": str(SRC), "TMPDIR": str(tmpdir_env)}
    done = subprocess.run(
        [sys.executable, "-m", f"llm_perf_opt.cli.{command}", *args, "-j", "1", "--format", "json"],
        env=env, stdout=write, stderr=subprocess.PIPE, timeout=300, check=False,
    )  # fmt: skip
    os.close(write)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert [x for x in err.splitlines() if x.startswith("Error: ")] == [
        "Error: cannot write to standard output: the pipe was closed"
    ]
