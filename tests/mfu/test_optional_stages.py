"""A text-only run (prefill and decode ranges, no vision, no run metadata) with a HF config.

The pure core is checked on hand-built frames; the CLI on a hand-built export in the real nsys
schema, written as a user's plain `torch.cuda.nvtx` script would leave it: ranges `prefill`,
`decode` ⊃ three `decode_step` (no payloads), default domain, no metadata mark.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_perf_opt.cli.analyze import main
from llm_perf_opt.errors import ConfigError, SelectionError
from llm_perf_opt.flops import decoders, vision_towers
from llm_perf_opt.flops.hf_model import HfFlops, read_hf_config
from llm_perf_opt.inputs.facts import ContextChoice, StageInputs
from llm_perf_opt.inputs.stage_ranges import default_refs
from llm_perf_opt.metrics.mfu import compute_mfu
from tests.helpers.mfu_inputs import synth_inputs
from tests.helpers.paths import REPO
from tests.helpers.synth import DOMAIN, PEAK, LinearFlops, SynthTrace

LLAMA = REPO / "tests" / "data" / "hf_configs" / "llama-3.2-1b.json"
SCHEMA = REPO / "benchmarks" / "nsys_schema_3_20_3.sql"
LP = 512
STEPS = 3


def _text_only_trace(tr: SynthTrace | None = None) -> SynthTrace:
    """prefill (2 kernels of 300 µs), decode ⊃ 3 steps (2 kernels of 10 µs each), no vision."""
    tr = tr or SynthTrace()
    tr.push("prefill", 0, 1_000_000)
    for k in range(2):
        tr.op(100 + k, 100_000 + k * 400_000, 400_000 + k * 400_000)
    tr.push("decode", 1_000_100, 5_000_000)
    for k in range(STEPS):
        s0 = 1_100_000 + k * 1_000_000
        tr.push("decode_step", s0, s0 + 900_000)
        for j in range(2):
            tr.op(s0 + 10 + j, s0 + 100_000 + j * 20_000, s0 + 110_000 + j * 20_000)
    return tr


def test_text_only_model_line_sums_prefill_and_decode_and_names_vision_absent() -> None:
    refs = default_refs(DOMAIN)
    ranges, ops = synth_inputs(_text_only_trace(), refs, ("prefill", "decode"))
    model = read_hf_config(LLAMA)
    assert model is not None and model.text is not None
    report = compute_mfu(
        ranges,
        ops,
        refs=refs,
        inputs=StageInputs(prefill_len=LP),
        flops_model=HfFlops(model, "bfloat16"),
        peak=PEAK,
        ctx=ContextChoice("auto"),
        stages=("prefill", "decode"),
    )
    assert list(report.stages) == ["prefill", "decode"]
    assert report.model.absent_stages == ("vision",)
    # C of each step without payloads or metadata: Lp + k, k = 1..3 (the nested step count)
    assert report.ctx.instances[0].ctx_lens == (513, 514, 515)
    assert report.ctx.instances[0].source == "Lp + k"
    prefill = decoders.prefill_flops(model.text, LP).total_flops
    decode = decoders.decode_flops_total(model.text, (513, 514, 515)).total_flops
    assert report.stages["prefill"].flops == prefill
    assert report.stages["decode"].flops == decode
    assert report.model.flops == prefill + decode
    assert report.model.gpu_busy_ns == 2 * 300_000 + STEPS * 2 * 10_000
    assert report.model.mfu_trace == pytest.approx((prefill + decode) / (1e15 * 660e-6))
    assert not any("vision mode" in w for w in report.warnings)


def test_no_stage_at_all_is_an_error() -> None:
    refs = default_refs(DOMAIN)
    ranges, ops = synth_inputs(_text_only_trace(), refs, ("prefill", "decode"), stages=())
    with pytest.raises(SelectionError, match="no stage to analyze"):
        compute_mfu(
            ranges,
            ops,
            refs=refs,
            inputs=StageInputs(prefill_len=LP),
            flops_model=LinearFlops(),
            peak=PEAK,
            ctx=ContextChoice("auto"),
            stages=(),
        )


def _insert(db: sqlite3.Connection, table: str, rows: list[dict[str, object]]) -> None:
    names = list(rows[0])
    sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    db.executemany(sql, [tuple(r[n] for n in names) for r in rows])


def _export(path: Path, with_vision: bool) -> Path:
    """prefill [0, 1 ms) with 2 kernels of 300 µs; decode [1, 5 ms) ⊃ 3 steps, 2 × 10 µs each;
    optionally a vision range [6, 7 ms) with one 500 µs kernel."""
    pid = 77
    tid = (pid << 24) | pid
    ranges = [("prefill", 0, 1_000_000), ("decode", 1_000_100, 5_000_000)]
    ranges += [("decode_step", 1_100_000 + k * 1_000_000, 2_000_000 + k * 1_000_000)
               for k in range(STEPS)]  # fmt: skip
    kernels = [(100_000, 400_000), (500_000, 800_000)]
    kernels += [(1_200_000 + k * 1_000_000 + j * 20_000, 1_210_000 + k * 1_000_000 + j * 20_000)
                for k in range(STEPS) for j in range(2)]  # fmt: skip
    if with_vision:
        ranges.append(("vision", 6_000_000, 7_000_000))
        kernels.append((6_100_000, 6_600_000))
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.read_text())
        _insert(db, "StringIds", [{"id": 1, "value": "gemm"}, {"id": 2, "value": "cudaLaunch"}])
        _insert(
            db,
            "NVTX_EVENTS",
            [
                {"start": s, "end": e, "eventType": 59, "text": name, "domainId": 0,
                 "globalTid": tid}
                for name, s, e in ranges
            ],
        )  # fmt: skip
        launches = [start - 50_000 for start, _ in kernels]
        _insert(
            db,
            "CUPTI_ACTIVITY_KIND_RUNTIME",
            [
                {"start": t, "end": t + 5, "eventClass": 1, "correlationId": i + 1, "nameId": 2,
                 "returnValue": 0, "globalTid": tid}
                for i, t in enumerate(launches)
            ],
        )  # fmt: skip
        fixed = dict.fromkeys(("gridY", "gridZ", "blockY", "blockZ", "registersPerThread"), 1)
        fixed |= dict.fromkeys(("staticSharedMemory", "dynamicSharedMemory",
                                "localMemoryPerThread", "localMemoryTotal"), 0)  # fmt: skip
        _insert(
            db,
            "CUPTI_ACTIVITY_KIND_KERNEL",
            [
                {"start": s, "end": e, "deviceId": 0, "contextId": 1, "streamId": 7,
                 "correlationId": i + 1, "globalPid": pid << 24, "demangledName": 1,
                 "shortName": 1, "gridX": 1, "blockX": 1, "gridId": i + 1, **fixed}
                for i, (s, e) in enumerate(kernels)
            ],
        )  # fmt: skip
    path.chmod(0o444)
    return path


@pytest.fixture
def text_only_export(tmp_path: Path) -> Path:
    return _export(tmp_path / "llama_like.sqlite", with_vision=False)


def test_cli_vlm_vision_stage_at_the_given_image_size(tmp_path: Path) -> None:
    trace = _export(tmp_path / "vlm.sqlite", with_vision=True)
    config = REPO / "tests" / "data" / "hf_configs" / "qwen2.5-vl-7b-instruct.json"
    args = [str(trace), "--config", str(config), "--prefill-len", str(LP), "--peak-tflops", "1000"]
    doc = json.loads(CliRunner().invoke(main, [*args, "--format", "json"]).stdout)
    assert doc["model"]["absent_stages"] == []
    assert "vision FLOPs for 448x448 px images; pass --image-size HxW" in doc["warnings"]
    model = read_hf_config(config)
    assert model is not None and model.vision is not None
    result = CliRunner().invoke(main, [*args, "--format", "json", "--image-size", "448x672"])
    doc = json.loads(result.stdout)
    expected = vision_towers.vision_flops(model.vision, (448, 672)).total_flops
    assert doc["stages"]["vision"]["flops"] == expected
    assert doc["stages"]["vision"]["gpu_busy_s"] == pytest.approx(500e-6)
    assert not any("image-size" in w for w in doc["warnings"])


def test_cli_analyzes_a_text_only_trace_with_a_hf_config(text_only_export: Path) -> None:
    args = [str(text_only_export), "--config", str(LLAMA), "--prefill-len", str(LP)]
    result = CliRunner().invoke(main, [*args, "--peak-tflops", "1000", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc["stages"]) == ["prefill", "decode"]
    assert doc["model"]["absent_stages"] == ["vision"]
    assert doc["flops_source"].endswith("(Hugging Face llama)")
    assert doc["stages"]["decode"]["decode_steps"] == STEPS
    assert doc["context"]["instances"][0]["ctx_lens"] == [513, 514, 515]
    model = read_hf_config(LLAMA)
    assert model is not None and model.text is not None
    prefill = decoders.prefill_flops(model.text, LP).total_flops
    assert doc["stages"]["prefill"]["flops"] == prefill
    assert doc["model"]["gpu_busy_s"] == pytest.approx(660e-6)
    # --prefill-logits all: lm_head on every prefill position
    result = CliRunner().invoke(
        main, [*args, "--peak-tflops", "1000", "--format", "json", "--prefill-logits", "all"]
    )
    lm_head = 2 * model.text.hidden_size * model.text.vocab_size
    assert json.loads(result.stdout)["stages"]["prefill"]["flops"] == prefill + (LP - 1) * lm_head
    table = CliRunner().invoke(main, [*args, "--peak-tflops", "1000"])
    assert table.exit_code == 0 and "model (no vision)" in table.stdout


def test_cli_named_stage_must_exist(text_only_export: Path) -> None:
    args = [str(text_only_export), "--config", str(LLAMA), "--prefill-len", str(LP)]
    result = CliRunner().invoke(main, [*args, "--stage", "vision=encoder"])
    assert result.exit_code == 2
    assert "no NVTX range 'encoder' (any domain) for stage vision" in result.output


def _vlm_trace() -> SynthTrace:
    """vision (one 500 µs kernel), then the text-only ranges."""
    tr = SynthTrace()
    tr.push("vision", -2_000_000, -1_000_000)
    tr.op(-1_999_000, -1_900_000, -1_400_000)
    return _text_only_trace(tr)


def test_vlm_vision_stage_uses_the_tower_at_the_given_image_size() -> None:
    refs = default_refs(DOMAIN)
    ranges, ops = synth_inputs(_vlm_trace(), refs)
    model = read_hf_config(REPO / "tests" / "data" / "hf_configs" / "qwen2.5-vl-7b-instruct.json")
    assert model is not None and model.vision is not None
    report = compute_mfu(
        ranges,
        ops,
        refs=refs,
        inputs=StageInputs(prefill_len=LP),
        flops_model=HfFlops(model, "bfloat16", image_hw=(448, 672)),
        peak=PEAK,
        ctx=ContextChoice("auto"),
    )
    assert report.model.absent_stages == ()
    expected = vision_towers.vision_flops(model.vision, (448, 672)).total_flops
    assert report.stages["vision"].flops == expected
    assert report.stages["vision"].gpu_busy_ns == 500_000


def test_vision_stage_with_a_text_only_config_names_the_fix() -> None:
    refs = default_refs(DOMAIN)
    ranges, ops = synth_inputs(_vlm_trace(), refs)
    model = read_hf_config(LLAMA)
    assert model is not None
    with pytest.raises(ConfigError, match="has no vision tower but the trace has a vision stage"):
        compute_mfu(
            ranges,
            ops,
            refs=refs,
            inputs=StageInputs(prefill_len=LP),
            flops_model=HfFlops(model, "bfloat16"),
            peak=PEAK,
            ctx=ContextChoice("auto"),
        )
