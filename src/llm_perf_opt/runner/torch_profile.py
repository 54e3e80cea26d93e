"""`--profiler torch`: the run under `torch.profiler`, written as a Kineto Chrome trace.

The analyzer reads such a trace like an nsys export (docs/inputs.md), so the trace carries what
the NVTX path carries: every runner range is also a `record_function` span of the same name on
the same thread (a `user_annotation` event, nested as the NVTX ranges are), and the run metadata
mark's JSON is added to the trace's top level under `RUN_META_TRACE_KEY`
(`add_metadata_json`). Payloads have no place in a span: the analysis takes the image order and
the decode-step context lengths from the metadata instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from llm_perf_opt.vocab import RUN_META_TRACE_KEY

PROFILE_FILENAME: Final = "run.pt.trace.json.gz"


class TorchProfile:
    """The spans and the metadata of one profiled run (`Annotator` calls these)."""

    def __init__(self, prof: profile) -> None:
        self._prof = prof

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        """A `record_function` span named `name` around the block."""
        with record_function(name):
            yield

    def add_metadata(self, json_text: str) -> None:
        """Put the run metadata (compact JSON) at the trace's top level."""
        self._prof.add_metadata_json(RUN_META_TRACE_KEY, json_text)

    def export(self, path: Path) -> Path:
        """Write the stopped profile's Chrome trace to `path` (gzip-compressed if it ends .gz)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._prof.export_chrome_trace(str(path))
        return path


@contextmanager
def torch_profile(enabled: bool) -> Iterator[TorchProfile | None]:
    """Profile the block with CPU (and, when available, CUDA) activities; None if not enabled.

    The trace stays in the profiler until `TorchProfile.export` writes it.
    """
    if not enabled:
        yield None
        return
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        yield TorchProfile(prof)
