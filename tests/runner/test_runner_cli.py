"""End to end through `runner.cli.main` on CPU with tiny models: NVTX calls, metadata, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The runner extra (`pip install -e ".[runner]"`) brings these; without it the module is skipped.
pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("nvtx", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("PIL", reason="needs the runner extra: pip install -e '.[runner]'")
import torch
from PIL import Image

from llm_perf_opt.runner import nvtx_stages, pipeline
from llm_perf_opt.runner.cli import main
from llm_perf_opt.schemas import load_schema, validate
from tests.helpers.nvtx import DOMAIN, Node, NvtxRecorder
from tests.helpers.paths import REPO

torch.set_num_threads(1)


def run_cli(out: Path, *args: str) -> dict[str, Any]:
    assert main(["--tiny", "--device", "cpu", "--out", str(out), *args]) == 0
    meta: dict[str, Any] = json.loads((out / "run.meta.json").read_text())
    return meta


def assert_image_range(node: Node, payload: int, prefill_len: int, steps: int) -> None:
    assert (node.name, node.payload) == ("image", payload)
    assert node.names() == ["vision", "prefill", "decode"]
    vision, prefill, decode = node.children
    assert vision.children == [] and prefill.children == []
    assert vision.payload is None and prefill.payload is None and decode.payload is None
    assert decode.names() == ["decode_step"] * steps
    assert [s.payload for s in decode.children] == [prefill_len + k for k in range(1, steps + 1)]
    assert all(s.children == [] for s in decode.children)


MODES = [
    ("deepseek-ocr", "tiny"),
    ("deepseek-ocr", "small"),
    ("deepseek-ocr", "base"),
    ("deepseek-ocr", "large"),
    ("deepseek-ocr", "gundam"),
    ("deepseek-ocr2", "base"),
    ("deepseek-ocr2", "gundam"),
]


@pytest.mark.parametrize(("family", "mode"), MODES)
def test_every_mode_runs_end_to_end_with_the_documented_ranges(
    family: str, mode: str, tmp_path: Path, recorder: NvtxRecorder
) -> None:
    meta = run_cli(
        tmp_path,
        *("--model", family, "--mode", mode, "--max-new-tokens", "3"),
        *("--warmup-rounds", "1", "--warmup-max-new-tokens", "2"),
    )
    assert validate(meta, load_schema()) == []
    (image,) = meta["images"]
    lp = image["prefill_len"]
    assert lp == image["image_positions"] + meta["prompt_text_tokens"]
    assert image["decode_steps"] == 2 and image["decode_context_lens"] == [lp + 1, lp + 2]
    assert len(image["generated_token_ids"]) == 3 and len(image["decode_step_wall_s"]) == 2
    assert image["mode"] == mode and meta["model"]["family"] == family
    assert (image["crop_grid"] is not None) == (mode == "gundam")
    # NVTX: warmup ⊃ image(0) with 1 decode step, then the measured image, then one mark
    assert recorder.domains == {DOMAIN}
    assert [r.name for r in recorder.roots] == ["warmup", "image"]
    warmup, measured = recorder.roots
    assert warmup.payload is None and len(warmup.children) == 1
    assert_image_range(warmup.children[0], 0, lp, 1)
    assert_image_range(measured, 0, lp, 2)
    assert recorder.events[-1] == "mark" and recorder.stack == []
    assert [json.loads(m) for m in recorder.marks] == [meta]


def test_several_synthetic_images_get_their_own_ranges(
    tmp_path: Path, recorder: NvtxRecorder
) -> None:
    meta = run_cli(tmp_path, "--num-images", "3", "--max-new-tokens", "2", "--warmup-rounds", "0")
    assert [img["index"] for img in meta["images"]] == [0, 1, 2]
    assert [img["source"] for img in meta["images"]] == ["synthetic"] * 3
    assert [(r.name, r.payload) for r in recorder.roots] == [("image", i) for i in range(3)]
    assert meta["warmup"]["rounds"] == 0


def test_decode_wall_time_covers_its_steps(tmp_path: Path, recorder: NvtxRecorder) -> None:
    image = run_cli(tmp_path, "--max-new-tokens", "5")["images"][0]
    assert image["wall_s"]["decode"] >= sum(image["decode_step_wall_s"]) > 0
    assert image["wall_s"]["vision"] > 0 and image["wall_s"]["prefill"] > 0


def test_no_nvtx_emits_nothing_but_still_writes_metadata(
    tmp_path: Path, recorder: NvtxRecorder
) -> None:
    meta = run_cli(tmp_path, "--no-nvtx", "--warmup-rounds", "1", "--max-new-tokens", "2")
    assert recorder.events == []
    assert meta["nvtx_enabled"] is False and meta["warmup"]["rounds"] == 1


def test_one_max_new_token_gives_an_empty_decode_range(
    tmp_path: Path, recorder: NvtxRecorder
) -> None:
    image = run_cli(tmp_path, "--max-new-tokens", "1")["images"][0]
    assert image["decode_steps"] == 0 and len(image["generated_token_ids"]) == 1
    assert recorder.roots[0].children[2].children == []


def test_image_files_are_read_and_recorded(tmp_path: Path, recorder: NvtxRecorder) -> None:
    paths = []
    for i, size in enumerate([(300, 200), (900, 700)]):
        path = tmp_path / f"in{i}.png"
        Image.new("RGB", size, (255, 255, 255)).save(path)
        paths.append(str(path))
    meta = run_cli(tmp_path / "out", "--mode", "gundam", "--image", *paths, "--max-new-tokens", "2")
    got = [(img["source"], img["width"], img["height"]) for img in meta["images"]]
    assert got == [(paths[0], 300, 200), (paths[1], 900, 700)]


def _spy_on_vision(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    real = nvtx_stages.vision_stage

    def spy(built: Any, prepared: Any) -> torch.Tensor:
        seen.append(prepared.pixel_values.clone())
        return real(built, prepared)

    monkeypatch.setattr(pipeline, "vision_stage", spy)
    return seen


def test_warmup_real_reuses_the_first_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: NvtxRecorder
) -> None:
    seen = _spy_on_vision(monkeypatch)
    meta = run_cli(tmp_path, "--warmup-rounds", "2", "--warmup-real", "--max-new-tokens", "2")
    assert meta["warmup"] == {"rounds": 2, "synthetic": False, "max_new_tokens": 4}
    assert len(seen) == 3 and all(torch.equal(s, seen[2]) for s in seen)
    assert [c.payload for c in recorder.roots[0].children] == [0, 1]


def test_warmup_synthetic_uses_random_pixels_of_the_same_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: NvtxRecorder
) -> None:
    seen = _spy_on_vision(monkeypatch)
    meta = run_cli(tmp_path, "--warmup-rounds", "1", "--max-new-tokens", "2")
    assert meta["warmup"]["synthetic"] is True
    assert seen[0].shape == seen[1].shape and not torch.equal(seen[0], seen[1])


def test_yaml_config_with_flags_overriding(tmp_path: Path, recorder: NvtxRecorder) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: deepseek-ocr2\nmode: gundam\nmax_new_tokens: 2\nwarmup_rounds: 0\n"
        "context_len_mode: fixed\ncontext_len_fixed: 500\ncrops: 2x1\nwarmup_synthetic: false\n"
    )
    meta = run_cli(tmp_path / "out", "--config", str(config), "--max-new-tokens", "3")
    assert meta["model"]["family"] == "deepseek-ocr2" and meta["mode"] == "gundam"
    assert meta["max_new_tokens"] == 3 and meta["warmup"]["rounds"] == 0
    assert meta["context"] == {"context_len_mode": "fixed", "context_len_fixed": 500}
    assert meta["images"][0]["crop_grid"] == [2, 1] and meta["warmup"]["synthetic"] is False


def test_default_out_dir_is_runs_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: NvtxRecorder
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--tiny", "--device", "cpu", "--max-new-tokens", "1"]) == 0
    (meta_file,) = (tmp_path / "runs").glob("*/run.meta.json")
    assert meta_file.parent.name == json.loads(meta_file.read_text())["run_id"]


def test_metadata_facts_about_model_and_device(tmp_path: Path, recorder: NvtxRecorder) -> None:
    meta = run_cli(tmp_path, "--model", "deepseek-ocr2", "--max-new-tokens", "1", "--seed", "3")
    assert meta["device"] == {"type": "cpu", "name": "cpu"}
    assert meta["dtype"] == "float32" and meta["seed"] == 3 and meta["nvtx_domain"] == DOMAIN
    model = meta["model"]
    assert model["tiny"] is True and model["random_weights"] is True
    assert model["config"]["schema"] == "llm_perf_opt.model_config/1"
    assert model["experts_implementation"] == "eager"
    assert meta["versions"]["torch"] == torch.__version__


def _error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--image", "/nonexistent/page.png"], "does not exist"),
        (["--mode", "huge"], "huge"),
        (["--model", "deepseek-ocr2", "--mode", "large"], "not available for deepseek-ocr2"),
        (["--crops", "2x2"], "gundam"),
        (["--mode", "gundam", "--crops", "5x5"], "2 to 9"),
        (["--crops", "two"], "WxH"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--max-new-tokens", "lots"], "invalid int"),
        (["--frobnicate"], "unrecognized"),
        (["--context-len-mode", "fixed"], "context_len_fixed"),
        (["--context-len-mode", "sometimes"], "context_len_mode"),
        (["--dtype", "int8"], "dtype"),
        (["--device", "tpu"], "not supported"),
        (["--image", "a.png", "--num-images", "2"], "not both"),
        (["--max-new-tokens", "2000"], "context window"),
        (["--config", "/nonexistent/run.yaml"], "does not exist"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str], recorder: NvtxRecorder
) -> None:
    assert needle in _error(capsys, "--tiny", "--device", "cpu", *args)


def test_bad_snapshot_paths_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "neither" in _error(capsys, "--device", "cpu", "--model", "/nonexistent/snapshot")
    assert "--tiny applies" in _error(capsys, "--tiny", "--model", str(tmp_path))


def test_unreadable_image_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "page.png"
    bad.write_bytes(b"\x89PNG but not really")
    assert "cannot be read" in _error(capsys, "--tiny", "--device", "cpu", "--image", str(bad))


def test_unknown_yaml_key_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("modle: deepseek-ocr\n")
    assert "modle" in _error(capsys, "--tiny", "--device", "cpu", "--config", str(config))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_but_absent(capsys: pytest.CaptureFixture[str]) -> None:
    assert "CUDA is not available" in _error(capsys, "--tiny", "--device", "cuda")


def test_out_of_gpu_memory_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def oom(settings: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")

    monkeypatch.setattr(pipeline, "run", oom)
    err = _error(capsys, "--tiny")
    assert "out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in err


def test_missing_nvtx_package_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "nvtx", None)  # makes `import nvtx` raise ImportError
    assert "--no-nvtx" in _error(capsys, "--tiny", "--device", "cpu")


def test_script_exits_2_with_one_line_on_bad_input() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_dsocr.py"), "--tiny", "--mode", "huge"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def _cudnn_on() -> bool:
    return bool(torch.backends.cuda.cudnn_sdp_enabled())  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("allow", [False, True])
def test_cudnn_attention_is_excluded_during_the_run_unless_asked(
    allow: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: NvtxRecorder
) -> None:
    seen: list[bool] = []
    real = nvtx_stages.decode_step

    def spy(*args: Any) -> Any:
        seen.append(_cudnn_on())
        return real(*args)

    monkeypatch.setattr(pipeline, "decode_step", spy)
    before = _cudnn_on()
    flags = ["--sdpa-cudnn"] if allow else []
    meta = run_cli(tmp_path, "--max-new-tokens", "3", *flags)
    assert seen == [allow and before] * 2
    assert meta["model"]["sdpa_cudnn"] is allow
    assert _cudnn_on() == before
