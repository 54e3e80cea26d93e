"""`--static-compute`: the fvcore report written into --out for the run's own model, mode and Lp."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# The runner extra (`pip install -e ".[runner]"`) brings these; without it the module is skipped.
pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
import torch

from llm_perf_opt.runner.cli import main
from tests.helpers.paths import TRACES

torch.set_num_threads(1)


def test_the_report_describes_the_run(tmp_path: Path) -> None:
    args = ["--tiny", "--device", "cpu", "--no-nvtx", "--out", str(tmp_path), "--mode", "gundam"]
    args += ["--max-new-tokens", "2", "--page-size", "800x1200", "--static-compute"]
    assert main(args) == 0
    meta = json.loads((tmp_path / "run.meta.json").read_text())
    report = json.loads((tmp_path / "static_compute.json").read_text())
    image = meta["images"][0]
    assert report["family"] == "deepseek-ocr" and report["tiny"] is True
    assert report["image"] == {"height": 1200, "width": 800, "mode": "gundam"}
    assert report["seq_len"] == image["prefill_len"]
    assert report["stages"]["vision"]["crop_grid"] == image["crop_grid"]
    assert report["stages"]["decode"]["ctx_len"] == image["prefill_len"] + 1
    assert {s["source"] for s in report["stages"].values()} == {"fvcore"}
    markdown = (tmp_path / "static_compute.md").read_text()
    assert markdown.startswith("# Static compute: deepseek-ocr (tiny)")
    assert f"prefill {image['prefill_len']} positions" in markdown


def test_missing_fvcore_is_refused_before_the_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "fvcore", None)
    monkeypatch.setitem(sys.modules, "fvcore.nn", None)
    monkeypatch.delitem(sys.modules, "llm_perf_opt.runner.static_compute", raising=False)
    args = ["--tiny", "--device", "cpu", "--no-nvtx", "--out", str(tmp_path), "--static-compute"]
    assert main(args) == 2
    assert "--static-compute needs fvcore" in capsys.readouterr().err
    assert not (tmp_path / "run.meta.json").exists()


def test_the_committed_h200_report_matches_its_run() -> None:
    meta = json.loads((TRACES / "meta" / "dsocr_v1_base_gmm.run.meta.json").read_text())
    report = json.loads((TRACES / "meta" / "dsocr_v1_base_gmm.static_compute.json").read_text())
    assert report["seq_len"] == meta["images"][0]["prefill_len"] == 282
    assert (report["dtype"], report["device"], report["tiny"]) == ("bfloat16", "cuda", False)
    for stage in report["stages"].values():
        assert stage["source"] == "fvcore"
        assert abs(stage["fvcore_vs_analytic"]) < 1e-5
