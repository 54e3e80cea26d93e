"""Fixtures of the reliability tests: a private temp dir for decompressed copies, the v1 trace."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mutate import decompressed_v1


@pytest.fixture
def scratch_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp dir of its own for this test's decompressed copies (checked empty afterwards)."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder


@pytest.fixture(scope="session")
def v1_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed DeepSeek-OCR v1 base trace, decompressed once (read-only use)."""
    return decompressed_v1(tmp_path_factory.mktemp("v1") / "dsocr_v1_base.sqlite")
