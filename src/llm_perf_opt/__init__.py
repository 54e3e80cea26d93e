"""llm-perf-opt: per-stage MFU of LLM and VLM inference from Nsight Systems traces.

Data flows one way: read trace (`trace`) → attribute GPU ops to NVTX ranges (`attribution`) →
FLOPs (`flops`) → MFU (`mfu`) → report (`report`). Only `llm_perf_opt.runner` imports torch.

The Python API (docs/api.md) is `analyze`, `compare` and `flops` with the errors they raise;
importing the package costs only the errors module: the API loads on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from llm_perf_opt.errors import (
    AnalysisError,
    ConfigError,
    CorruptTraceError,
    DaskError,
    LlmPerfOptError,
    MetaError,
    MissingColumnError,
    MissingInputError,
    MissingTableError,
    NoGpuOpsError,
    NoGpuTimeError,
    NoNvtxEventsError,
    NoTracesError,
    OutputError,
    PeakSourceError,
    ResultsDbError,
    RunSpecError,
    SelectionError,
    TraceAccessError,
    TraceError,
    TraceLockedError,
    TraceNotFoundError,
    TraceTooLargeError,
    UnknownGpuError,
    UnorderedTableError,
    WrongFileKindError,
)

if TYPE_CHECKING:
    from llm_perf_opt.api import Analysis, Comparison, analyze, analyze_batch, compare, flops

__version__ = "0.1.0"

_API = frozenset({"Analysis", "Comparison", "analyze", "analyze_batch", "compare", "flops"})

__all__ = [
    "Analysis",
    "AnalysisError",
    "Comparison",
    "ConfigError",
    "CorruptTraceError",
    "DaskError",
    "LlmPerfOptError",
    "MetaError",
    "MissingColumnError",
    "MissingInputError",
    "MissingTableError",
    "NoGpuOpsError",
    "NoGpuTimeError",
    "NoNvtxEventsError",
    "NoTracesError",
    "OutputError",
    "PeakSourceError",
    "ResultsDbError",
    "RunSpecError",
    "SelectionError",
    "TraceAccessError",
    "TraceError",
    "TraceLockedError",
    "TraceNotFoundError",
    "TraceTooLargeError",
    "UnknownGpuError",
    "UnorderedTableError",
    "WrongFileKindError",
    "__version__",
    "analyze",
    "analyze_batch",
    "compare",
    "flops",
]


class _Package(types.ModuleType):
    """`flops` is an API function and also a package of the package: importing
    `llm_perf_opt.flops.…` would bind the package attribute to the module, so that binding is
    skipped for the API's names (the modules stay importable by their full names)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _API or not isinstance(value, types.ModuleType):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """The API on first use: `api` imports polars and the analysis (about a second)."""
    if name in _API:
        return getattr(importlib.import_module("llm_perf_opt.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
