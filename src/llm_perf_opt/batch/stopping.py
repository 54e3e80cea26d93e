"""Stopping on a signal, in the command's process and in its worker processes alike.

Ctrl-C, SIGTERM and SIGHUP stop a run at once with 128 + the signal number: first the stop
callbacks run (a batch ends its worker processes, a Dask client its futures), then the
decompressed temporaries and half-written outputs of this process are removed. Worker threads
are not waited for.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any, Final

from llm_perf_opt.trace import remove_scratch

STOP_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
# Outputs being written now: removed when a signal stops the run half-way.
_PARTIAL_OUTPUTS: set[Path] = set()
# Run (best effort, in order) before this process exits on a signal.
_ON_STOP: list[Callable[[], None]] = []
_STOP_LOCK = threading.Lock()
# Whether a stop says why on stderr (a worker process leaves that to the command).
_LOUD: list[bool] = [True]


def track_partial(path: Path) -> None:
    """`path` is being written: remove it if a signal stops the run."""
    _PARTIAL_OUTPUTS.add(path)


def untrack_partial(path: Path) -> None:
    _PARTIAL_OUTPUTS.discard(path)


@contextmanager
def on_stop(callback: Callable[[], None]) -> Iterator[None]:
    """Run `callback` when a signal stops the process while this block runs."""
    _ON_STOP.append(callback)
    try:
        yield
    finally:
        with suppress(ValueError):
            _ON_STOP.remove(callback)


def stop(signum: int) -> None:
    """Run the stop callbacks, remove temporaries and half-written outputs, say why, and exit
    at once."""
    with _STOP_LOCK:
        for callback in reversed(_ON_STOP):
            with suppress(Exception):
                callback()
        remove_scratch()
        for path in list(_PARTIAL_OUTPUTS):
            with suppress(OSError):
                path.unlink(missing_ok=True)
        if _LOUD[0]:
            name = signal.Signals(signum).name
            with suppress(OSError):
                os.write(2, f"Error: stopped by {name}; unfinished outputs removed\n".encode())
        os._exit(128 + signum)


def _handler(signum: int, _frame: FrameType | None) -> None:
    stop(signum)


@contextmanager
def stop_on_signals(*, loud: bool = True) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP stop the run within a second, whatever phase it is in: the
    Python handler runs between bytecodes, and a watcher thread woken through the wakeup fd acts
    when the main thread is inside a long native call that released the interpreter. `loud`
    False: exit without the `Error: stopped by` line (worker processes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _LOUD[0] = loud
    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, _handler)
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_fd,), daemon=True, name="stop-watch")
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(write_fd)  # ends the watcher's read
        watcher.join(timeout=1)
        os.close(read_fd)


def _watch(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 1)
        except OSError:
            return
        if not data:
            return
        if data[0] in STOP_SIGNALS:
            stop(data[0])
