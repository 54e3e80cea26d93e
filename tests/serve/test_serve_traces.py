"""Engine step ranges of hand-built nsys exports (tests.helpers.serve_export), one per name format
of `engines.STEP_FORMATS`: every step recognised, its GPU ops and busy time those written, the
malformed name a warning, the zero-token step idle, and the CLI needing only --config."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.cli.analyze import main as analyze_cli
from llm_perf_opt.inputs.step_names import STEP_FORMATS, formats_for, step_names
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.report import to_csv, to_json, to_markdown
from llm_perf_opt.vocab import VLLM_STEP_NAME
from tests.helpers.committed import LLAMA_CONFIG
from tests.helpers.paths import REPO
from tests.helpers.serve_export import StepLoop, llama_with_steps, write_export
from tests.helpers.synth import union_ns

MALFORMED = "execute_context_1(?)_generation_0(0)"

# Per format: well-formed step names (a zero-token step among them where the format has one)
# and how the fixture launches their kernels.
LOOPS = {
    "vllm-v1": StepLoop(
        [
            "execute_context_1(512)_generation_0(0)",
            "execute_context_1(510)_generation_2(2)",
            "execute_context_0(0)_generation_3(3)",
            "execute_context_0(0)_generation_0(0)",
        ],
        lag_ns=150_000,  # async scheduling: each step's kernels run in the next step's range
        graph_steps=frozenset({2}),  # the decode step replays a CUDA graph
    ),
    "vllm-v1-detailed": StepLoop(
        [
            "execute_514_context_1(sq512sk512sqsq262144sqsk262144)"
            "_generation_2(sq2sk30sqsq2sqsk30)",
            "execute_0_context_0(sq0sk0sqsq0sqsk0)_generation_0(sq0sk0sqsq0sqsk0)",
        ],
        domain="vllm",
    ),
    "vllm-v1-new-cached": StepLoop(
        ["execute_new_2_cached_0", "execute_new_0_cached_2"], worker=True
    ),
    "sglang": StepLoop(
        [
            "step[EXTEND bs=2 toks=12 c_sqsq=80 c_sqsk=120 c_sk=20]",
            "step[DECODE bs=2]",
            "step[MIXED bs=2 c=1 g=1 c_sq=5 c_sk=8 c_sqsq=25 c_sqsk=40 g_sq=1 g_sk=12 "
            "g_sqsq=1 g_sqsk=12]",
            "step[MIXED bs=3]",
            "step[IDLE bs=0]",
        ],
        domain="sglang",
    ),
    "trtllm": StepLoop(
        [
            "[Executor] _forward_step 7: 1 ctx reqs, 2 gen reqs",
            "[Executor] _forward_step: 0 ctx reqs, 0 ctx tokens, 4 gen reqs",
            "[Executor] _forward_step 9: 0 ctx reqs, 0 gen reqs",
        ],
        worker=True,
        graph_steps=frozenset({1}),
    ),
}


def test_every_format_of_the_table_has_a_fixture() -> None:
    used = {f.name for f in STEP_FORMATS}
    read: set[str] = set()
    for loop in LOOPS.values():
        read |= set(step_names(pl.Series(list(loop.names)), formats_for("auto")).names["format"])
    assert read == used


@pytest.fixture(scope="module", params=list(LOOPS))
def export(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, StepLoop]:
    loop = LOOPS[request.param]
    loop = StepLoop([*loop.names, MALFORMED], loop.kernels, loop.domain, loop.worker,
                    loop.lag_ns, loop.graph_steps)  # fmt: skip
    path = write_export(tmp_path_factory.mktemp("serve") / f"{request.param}.sqlite", loop)
    return path, loop


@pytest.fixture(scope="module")
def report(export: tuple[Path, StepLoop]) -> MfuReport:
    """`mfu-analyze TRACE --config config.json` of the export."""
    analysed = analyze_trace(export[0], AnalyzeOptions(config_path=str(LLAMA_CONFIG))).report
    assert analysed is not None and analysed.engine is not None
    return analysed


def test_steps_recognised_with_their_gpu_ops_and_busy_time(
    export: tuple[Path, StepLoop], report: MfuReport
) -> None:
    _, loop = export
    assert report.engine is not None and not report.stages
    steps = report.engine.steps
    assert [s.name for s in steps] == list(loop.names[:-1])  # the malformed one left out
    for k, step in enumerate(steps):
        written = loop.written[k]
        # NVIDIA's NumGPUOps: a CUDA graph launch is one op however many kernels it ran
        assert step.n_gpu_ops == (1 if k in loop.graph_steps else len(written))
        assert step.n_op_rows == len(written)
        assert step.gpu_busy_ns == union_ns(written)
    assert any(MALFORMED in w and "--step-pattern" in w for w in report.warnings)


def test_zero_token_steps_are_idle_with_no_flops(report: MfuReport) -> None:
    assert report.engine is not None
    idle = [s for s in report.engine.steps if s.phase == "idle"]
    for step in idle:
        assert step.tokens == 0 and step.flops == 0.0 and step.attention_exact
        assert step.bytes == 0.0 and step.mbu_trace == 0.0
    phases = {p.phase: p for p in report.engine.phases}
    if idle:
        assert phases["idle"].n_steps == len(idle) and phases["idle"].flops == 0.0


def test_phases_sum_their_steps(report: MfuReport) -> None:
    assert report.engine is not None
    for phase in report.engine.phases:
        mine = [s for s in report.engine.steps if s.phase == phase.phase]
        assert phase.n_steps == len(mine)
        assert phase.gpu_busy_ns == sum(s.gpu_busy_ns for s in mine)
        assert phase.n_gpu_ops == sum(s.n_gpu_ops for s in mine)
        assert phase.step_busy_p50_ns in {s.gpu_busy_ns for s in mine}
        if phase.flops is not None:
            assert phase.flops == pytest.approx(sum(s.flops or 0 for s in mine))
            assert phase.mfu_trace == pytest.approx(
                phase.flops / (report.peak.peak_flops * phase.gpu_busy_ns * 1e-9)
            )
        else:  # a step the name gives no token counts for
            assert any(s.flops is None for s in mine)
        assert phase.host is not None and phase.host.busy_ns == phase.gpu_busy_ns


def test_the_runner_step_names_are_read_as_vllm_writes_them() -> None:
    name = VLLM_STEP_NAME.format(ctx_reqs=1, ctx_tokens=510, gen_reqs=2, gen_tokens=2)
    read = step_names(pl.Series([name]), formats_for("vllm")).names.row(0, named=True)
    assert read["format"] == "vllm-v1"
    assert (read["ctx_reqs"], read["ctx_tokens"], read["gen_reqs"], read["gen_tokens"]) == (
        1,
        510,
        2,
        2,
    )


def test_vllm_detailed_names_make_attention_exact() -> None:
    """A prefill of 512 from an empty cache and two decodes at 14 and 15 cached positions, as
    vLLM's detailed annotation sums them (sk: Σ seq_len = computed + scheduled)."""
    loop = LOOPS["vllm-v1-detailed"]
    read = step_names(pl.Series(loop.names[:1]), formats_for("vllm")).names.row(0, named=True)
    assert (read["ctx_reqs"], read["ctx_tokens"], read["c_sk"], read["c_sqsq"]) == (
        1,
        512,
        512,
        262144,
    )
    assert (read["gen_reqs"], read["gen_tokens"], read["g_sk"], read["g_sqsk"]) == (2, 2, 30, 30)


def test_sglang_names_read_into_counts_and_sums() -> None:
    names = step_names(pl.Series(LOOPS["sglang"].names), formats_for("sglang")).names
    by = {r["format"]: r for r in names.to_dicts()}
    assert by["sglang-extend"]["c_sqsk"] == 120 and by["sglang-decode"]["gen_tokens"] == 2
    assert by["sglang-mixed-plain"]["ctx_tokens"] is None


def test_cli_needs_only_the_config(export: tuple[Path, StepLoop], tmp_path: Path) -> None:
    path, loop = export
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        analyze_cli,
        [
            str(path),
            "--config",
            str(LLAMA_CONFIG),
            "--format",
            "json",
            "-o",
            str(out),
            "--markdown",
            str(tmp_path / "r.md"),
            "--csv",
            str(tmp_path / "r.csv"),
            "--plots",
            str(tmp_path / "figs"),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert len(doc["engine_steps"]) == len(loop.names) - 1
    issue_keys = {
        "name", "phase", "ctx_reqs", "ctx_tokens", "gen_reqs", "gen_tokens", "n_gpu_ops",
        "gpu_busy_s", "wall_s", "flops", "flops_linear", "flops_attention", "attention_exact",
        "mfu_trace", "mfu_wall",
    }  # fmt: skip
    assert all(issue_keys <= set(step) for step in doc["engine_steps"])
    phase_keys = {
        "n_steps", "tokens", "flops", "gpu_busy_s", "wall_s", "mfu_trace", "mfu_wall",
        "step_busy_p50_s", "step_busy_p90_s",
    }  # fmt: skip
    assert doc["engine_phases"] and all(
        set(phase_keys) <= set(p) for p in doc["engine_phases"].values()
    )
    assert doc["stages"] == {} and doc["engine"]["engines"]
    documented = (REPO / "docs" / "json-output.md").read_text()
    keys = set(doc["engine"]) | set(doc["engine_steps"][0])
    keys |= {k for p in doc["engine_phases"].values() for k in p}
    assert not sorted(k for k in keys if f"`{k}`" not in documented)
    assert "## MFU per engine phase (" in (tmp_path / "r.md").read_text()
    assert "engine_step" in (tmp_path / "r.csv").read_text()
    assert (tmp_path / "figs" / "engine_steps.png").stat().st_size > 5_000


def test_engine_none_says_how_to_read_steps(export: tuple[Path, StepLoop]) -> None:
    path, _ = export
    result = CliRunner().invoke(
        analyze_cli, [str(path), "--config", str(LLAMA_CONFIG), "--engine", "none"]
    )
    assert result.exit_code == 0  # the whole-trace view, and a warning saying what else to ask
    assert "--engine auto or --step-pattern" in result.output
    assert "Whole trace: GPU busy" in result.output


def test_step_pattern_reads_another_engine(tmp_path: Path) -> None:
    loop = StepLoop(["fwd p=512/1 d=0", "fwd p=0/0 d=4", "fwd p=x"])
    path = write_export(tmp_path / "custom.sqlite", loop)
    pattern = r"^fwd p=(?P<ctx_tokens>\d+)/(?P<ctx_reqs>\d+) d=(?P<gen_reqs>\d+)$"
    report = analyze_trace(
        path, AnalyzeOptions(config_path=str(LLAMA_CONFIG), step_pattern=pattern)
    ).report
    assert report is not None and report.engine is not None
    steps = report.engine.steps
    assert [(s.phase, s.ctx_tokens, s.gen_reqs) for s in steps] == [
        ("prefill", 512, 0),
        ("decode", 0, 4),
    ]
    assert steps[1].flops is None  # gen_tokens not named: no FLOPs for that step


def test_a_trace_with_stages_and_engine_steps_prints_both(tmp_path: Path) -> None:
    """The committed Llama trace with a vLLM step range over every decode step."""
    path, n_steps = llama_with_steps(
        tmp_path / "llama_steps.sqlite", "execute_context_0(0)_generation_1(1)"
    )
    options = AnalyzeOptions(config_path=str(LLAMA_CONFIG), prefill_len=512)
    report = analyze_trace(path, options).report
    assert report is not None and report.engine is not None
    assert set(report.stages) == {"prefill", "decode"}
    steps = report.engine.steps
    assert len(steps) == n_steps == report.stages["decode"].decode_steps
    # the same ops: each engine step holds exactly its decode_step range's GPU work
    assert [s.gpu_busy_ns for s in steps] == [d.gpu_busy_ns for d in report.decode_steps]
    assert [s.n_gpu_ops for s in steps] == [d.n_gpu_ops for d in report.decode_steps]
    text = to_markdown(report)
    assert "## MFU per stage" in text and "## MFU per engine phase (" in text
    assert to_json(report)["engine_phases"]["decode"]["n_steps"] == n_steps
    assert "engine_phase" in to_csv(report)
