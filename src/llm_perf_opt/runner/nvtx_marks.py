"""NVTX ranges and the metadata mark, all in the one project domain (and profiler spans).

Every range is a push/pop pair on the calling thread, so nesting is exact and the analyzer can
attribute GPU work by the launching thread. Calls go through the `nvtx` module attribute at call
time (tests replace them). With `enabled=False` (`--no-nvtx`) nothing is emitted, so the annotation
overhead is the ratio of two otherwise identical runs (benchmarks/bench_nvtx_overhead.py).
Under `--profiler torch` every range is also a span of the same name and the mark's JSON also
goes into the profiler trace (`runner.torch_profile`), with or without NVTX.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import ModuleType
from typing import Protocol

from llm_perf_opt.errors import LlmPerfOptError
from llm_perf_opt.vocab import NVTX_DOMAIN


class NvtxUnavailableError(LlmPerfOptError):
    """NVTX annotations were asked for but the `nvtx` package is not installed."""


class Spans(Protocol):
    """A second sink for the ranges and the mark (`runner.torch_profile.TorchProfile`)."""

    def span(self, name: str) -> AbstractContextManager[None]:
        """A span named `name` around the block."""
        ...

    def add_metadata(self, json_text: str) -> None:
        """Record the metadata mark's JSON."""
        ...


class Annotator:
    """Emits NVTX push/pop ranges and marks in `NVTX_DOMAIN` (nothing when disabled), and the
    same ranges and mark into `spans` when given."""

    def __init__(self, enabled: bool, spans: Spans | None = None) -> None:
        self.enabled = enabled
        self._nvtx: ModuleType | None = _import_nvtx() if enabled else None
        self._spans = spans

    @contextmanager
    def range(self, name: str, payload: int | None = None) -> Iterator[None]:
        """Push range `name` (optional int payload) for the duration of the block."""
        with self._span(name):
            if self._nvtx is None:
                yield
                return
            self._nvtx.push_range(message=name, domain=NVTX_DOMAIN, payload=payload)
            try:
                yield
            finally:
                self._nvtx.pop_range(domain=NVTX_DOMAIN)

    def mark(self, message: str) -> None:
        """Emit one instantaneous marker whose message is `message`."""
        if self._nvtx is not None:
            self._nvtx.mark(message=message, domain=NVTX_DOMAIN)
        if self._spans is not None:
            self._spans.add_metadata(message)

    def _span(self, name: str) -> AbstractContextManager[None]:
        return nullcontext() if self._spans is None else self._spans.span(name)


def _import_nvtx() -> ModuleType:
    try:
        import nvtx
    except ImportError:
        raise NvtxUnavailableError(
            "the nvtx package is not installed; `pip install nvtx` or pass --no-nvtx"
        ) from None
    module: ModuleType = nvtx
    return module
