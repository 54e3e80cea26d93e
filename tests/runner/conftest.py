"""The NVTX recorder fixture of the runner tests (`nvtx` comes with the runner extra; the modules
that use the fixture skip without it)."""

from __future__ import annotations

import pytest

from tests.helpers.nvtx import NvtxRecorder


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> NvtxRecorder:
    """nvtx.push_range/pop_range/mark replaced by a recorder for the test."""
    import nvtx

    rec = NvtxRecorder()
    monkeypatch.setattr(nvtx, "push_range", rec.push_range)
    monkeypatch.setattr(nvtx, "pop_range", rec.pop_range)
    monkeypatch.setattr(nvtx, "mark", rec.mark)
    return rec
