"""The committed traces are what traces/README.md says — NVTX names and nesting, the
runner's metadata (checked against the schema and against the analytic image layout) and the GPU."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.schemas import check_run_meta
from llm_perf_opt.trace import open_trace
from llm_perf_opt.vocab import RUN_META_SCHEMA_ID
from tests.helpers.paths import TRACES
from tests.helpers.real_traces import DOMAIN, EXPECTED, NAMES, STAGES, RealTraces
from tests.helpers.recompute import GPU_NAME, config_of, image_layout, measured_instances

RUNNER_NAMES = {"warmup", "image", *STAGES, "decode_step"}
N_IMAGES = 3
WARMUP_ROUNDS = 1
DECODE_STEPS = 5  # --max-new-tokens 6: prefill yields the first token
WARMUP_DECODE_STEPS = 1  # --warmup-max-new-tokens 2

# LLM positions of one image, derived by hand (docs/flops.md): a 1024 px global view → SAM grid 64
# → compressor ÷4 → 16×16; v1 lays it out as 16 rows × (16 + 1 newline) + 1 view separator; a
# 640 px crop → 10×10, and gundam's 2×3 crop block is (3·10) rows × (2·10 + 1); OCR-2 uses 256
# query embeddings + 1 separator. The prompt adds BOS + 8 instruction ids.
HAND_POSITIONS = {
    "dsocr_v1_base": 16 * 17 + 1,
    "dsocr_v1_gundam": 16 * 17 + (3 * 10) * (2 * 10 + 1) + 1,
    "dsocr2_base": 256 + 1,
}
PROMPT_TEXT_TOKENS = 9


@pytest.mark.parametrize("name", NAMES)
def test_nvtx_names_and_nesting(real: RealTraces, name: str) -> None:
    ranges = open_trace(real.plain(name)).nvtx_ranges()
    ours = ranges.filter(pl.col("domain") == DOMAIN)
    assert set(ours["name"]) == RUNNER_NAMES
    assert set(ranges["domain"]) == {DOMAIN, "CCCL"}  # CUB's own ranges from torch.nonzero
    counts = dict(ours.group_by("name").len().iter_rows())
    rounds = N_IMAGES + WARMUP_ROUNDS
    assert counts == {
        "warmup": 1,
        "image": rounds,
        "vision": rounds,
        "prefill": rounds,
        "decode": rounds,
        "decode_step": N_IMAGES * DECODE_STEPS + WARMUP_ROUNDS * WARMUP_DECODE_STEPS,
    }
    assert set(ours["style"]) == {"PushPop"} and ours["tid"].n_unique() == 1
    # measured images: image ⊃ vision, prefill, decode (in that order) ⊃ 5 decode steps whose
    # payload is the C they attend to
    meta = real.meta(name)
    instances = measured_instances(real.attribution(name))
    assert [i["image"]["payload_int"] for i in instances] == [0, 1, 2]
    for inst, img in zip(instances, meta["images"], strict=True):
        starts = [inst[s]["cpu_start_ns"] for s in STAGES]
        assert starts == sorted(starts)
        assert [s["payload_int"] for s in inst["steps"]] == img["decode_context_lens"]
        assert img["decode_context_lens"] == [
            img["prefill_len"] + k for k in range(1, DECODE_STEPS + 1)
        ]


@pytest.mark.parametrize("name", NAMES)
def test_metadata_mark(real: RealTraces, name: str) -> None:
    meta = real.meta(name)
    check_run_meta(meta)  # the shipped JSON Schema
    committed = json.loads((TRACES / "meta" / f"{name}.run.meta.json").read_text())
    assert meta == committed  # traces/meta/ holds the same run.meta.json
    want = EXPECTED[name]
    assert meta["schema"] == RUN_META_SCHEMA_ID == "llm_perf_opt.run_meta/1"
    assert meta["model"]["family"] == want.family and meta["mode"] == want.mode
    assert meta["model"]["random_weights"] and not meta["model"]["tiny"]
    assert meta["nvtx_enabled"] and meta["nvtx_domain"] == DOMAIN
    assert meta["dtype"] == "bfloat16"
    assert meta["device"] == {"type": "cuda", "name": GPU_NAME}
    assert meta["warmup"]["rounds"] == WARMUP_ROUNDS
    assert meta["max_new_tokens"] == DECODE_STEPS + 1
    assert meta["prompt_text_tokens"] == PROMPT_TEXT_TOKENS
    assert len(meta["images"]) == N_IMAGES


def _grid(img: dict[str, Any]) -> tuple[int, int] | None:
    return (img["crop_grid"][0], img["crop_grid"][1]) if img["crop_grid"] else None


@pytest.mark.parametrize("name", NAMES)
def test_prefill_lengths_follow_the_image_layout(real: RealTraces, name: str) -> None:
    """Lp is not taken on trust: flops.analytic's layout and a hand count give the runner's Lp."""
    meta = real.meta(name)
    cfg = config_of(meta)
    want = EXPECTED[name]
    for img in meta["images"]:
        assert img["mode"] == want.mode and _grid(img) == want.crop_grid
        layout = image_layout(cfg, img)
        assert layout.image_positions == HAND_POSITIONS[name] == img["image_positions"]
        assert layout.vision_tokens == img["vision_tokens"]
        assert layout.n_crops == img["n_crops"]
        lp = layout.image_positions + meta["prompt_text_tokens"]
        assert lp == img["prefill_len"] == want.prefill_len
        assert img["decode_steps"] == DECODE_STEPS
    # the config in the mark is the full-size built-in one of its family
    assert cfg == builtin_config(want.family)


@pytest.mark.parametrize("name", NAMES)
def test_gpu_is_an_h100_sxm(real: RealTraces, name: str) -> None:
    trace = open_trace(real.plain(name))
    info = trace.gpu_info()
    assert info["name"].to_list() == [GPU_NAME]
    row = info.row(0, named=True)
    assert (row["chip_name"], row["compute_major"], row["sm_count"]) == ("GH100", 9, 132)
    assert trace.nsys_version.startswith("2025.3")
    doc = real.auto(name)
    assert doc["gpu_name"] == GPU_NAME and doc["peak_table_row"] == "H100 SXM"
