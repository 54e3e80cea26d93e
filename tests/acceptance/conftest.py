"""The real H100 DeepSeek-OCR traces in traces/, analyzed once per option set for the session
(`tests.helpers.real_traces.RealTraces`)."""

from __future__ import annotations

import pytest

from tests.helpers.real_traces import RealTraces


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory) -> RealTraces:
    return RealTraces(tmp_path_factory.mktemp("real_traces"))
