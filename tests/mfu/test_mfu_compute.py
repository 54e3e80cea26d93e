"""MFU math on hand-built traces: every expected number comes from the times in `synth`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from llm_perf_opt.errors import AnalysisError, MissingInputError, NoGpuTimeError, SelectionError
from llm_perf_opt.inputs.facts import ContextChoice, StageInputs
from llm_perf_opt.inputs.run_meta import parse_meta
from llm_perf_opt.inputs.stage_ranges import RangeRef, default_refs
from llm_perf_opt.metrics.mfu import MfuReport, compute_mfu
from llm_perf_opt.metrics.verdict import NO_BREAKDOWN
from tests.helpers.mfu_inputs import synth_inputs
from tests.helpers.synth import (
    DOMAIN,
    LP,
    PEAK,
    LinearFlops,
    SynthTrace,
    meta_dict,
    runner_like_trace,
    union_ns,
)

FLOPS = LinearFlops()


def run(
    trace: SynthTrace | None = None,
    meta: dict[str, Any] | None = None,
    *,
    use_meta: bool = True,
    refs: dict[str, RangeRef] | None = None,
    inputs: StageInputs | None = None,
    ctx: ContextChoice | None = None,
    include_warmup: bool = False,
) -> MfuReport:
    trace = trace or runner_like_trace()[0]
    refs = refs or default_refs(DOMAIN)
    ranges, ops = synth_inputs(trace, refs, include_warmup=include_warmup)
    parsed = parse_meta(meta or meta_dict(), "test") if use_meta else None
    return compute_mfu(
        ranges,
        ops,
        refs=refs,
        inputs=inputs or StageInputs(meta=parsed),
        flops_model=FLOPS,
        peak=PEAK,
        ctx=ctx or ContextChoice("auto"),
        include_warmup=include_warmup,
    )


def test_instances_exclude_warmup_and_follow_image_payloads() -> None:
    report = run()
    for stage in report.stages.values():
        assert [i.image_index for i in stage.instances] == [0, 1]
        assert not any(i.warmup for i in stage.instances)


def test_per_instance_numbers_from_their_pieces() -> None:
    _, intervals = runner_like_trace()
    report = run()
    meta = meta_dict()
    for i, inst in enumerate(report.stages["vision"].instances):
        ops = intervals[1 + i]["vision"]  # [0] is the warmup image
        busy = union_ns(ops)
        # two 500 µs kernels overlapping by 200 µs, a 50 µs memcpy, a 100 µs CCCL kernel
        assert busy == 800_000 + 50_000 + 100_000
        assert inst.gpu_busy_ns == busy
        assert inst.kernel_sum_ns == 500_000 + 500_000 + 100_000  # the memcpy is no kernel
        assert inst.n_kernels == 3
        wall_s = meta["images"][i]["wall_s"]["vision"]
        assert inst.wall_source == "runner"
        assert inst.wall_ns == pytest.approx(wall_s * 1e9)
        assert inst.flops == FLOPS.vision_per_view
        assert inst.mfu_trace == pytest.approx(2e11 / (1e15 * busy * 1e-9))
        assert inst.mfu_wall == pytest.approx(2e11 / (1e15 * wall_s))
        assert inst.idle_fraction == pytest.approx(1 - busy * 1e-9 / wall_s)
        assert inst.mfu_trace >= inst.mfu_wall  # type: ignore[operator]


def test_stage_and_model_aggregates_are_sums() -> None:
    report = run()
    for stage in report.stages.values():
        flops = sum(i.flops for i in stage.instances)
        busy = sum(i.gpu_busy_ns for i in stage.instances)
        wall = sum(i.wall_ns for i in stage.instances)
        assert stage.flops == pytest.approx(flops)
        assert stage.gpu_busy_ns == busy
        assert stage.wall_ns == pytest.approx(wall)
        assert stage.mfu_trace == pytest.approx(flops / (1e15 * busy * 1e-9))
        assert stage.mfu_wall == pytest.approx(flops / (1e15 * wall * 1e-9))
    flops = sum(s.flops for s in report.stages.values())
    busy = sum(s.gpu_busy_ns for s in report.stages.values())
    assert report.model.mfu_trace == pytest.approx(flops / (1e15 * busy * 1e-9))
    prefill = report.stages["prefill"]
    assert prefill.flops == pytest.approx(2 * FLOPS.prefill_per_position * LP)
    assert prefill.gpu_busy_ns == 2 * 4 * 300_000


def test_decode_auto_uses_step_payloads_and_reports_mbu() -> None:
    report = run()
    decode = report.stages["decode"]
    lens = [LP + 1, LP + 2, LP + 3]
    assert [c.ctx_lens for c in report.ctx.instances] == [tuple(lens)] * 2
    assert {c.source for c in report.ctx.instances} == {"decode_step payloads"}
    flops = 2 * sum(5e8 + 1e5 * c for c in lens)
    n_bytes = 2 * sum(1e9 + 6e4 * c for c in lens)
    busy = 2 * 3 * 2 * 10_000  # 2 images × 3 steps × 2 kernels of 10 µs
    assert decode.flops == pytest.approx(flops)
    assert decode.gpu_busy_ns == busy
    assert decode.decode_steps == 6
    assert decode.kernels_per_step == 2
    assert decode.mbu_trace == pytest.approx(n_bytes / (2e12 * busy * 1e-9))
    assert decode.mbu_wall == pytest.approx(n_bytes / (2e12 * 2 * 0.0095))
    assert decode.bytes_per_step == pytest.approx(n_bytes / 6)
    steps = report.decode_steps
    assert [(s.instance, s.step, s.ctx_len) for s in steps[:3]] == [
        (0, 1, 301),
        (0, 2, 302),
        (0, 3, 303),
    ]
    assert all(s.gpu_busy_ns == 20_000 and s.wall_source == "runner" for s in steps)
    assert [s.wall_ns for s in steps[:3]] == pytest.approx([1e6, 1.1e6, 1.2e6])


def test_ctx_modes_move_decode_mfu_as_the_formula_says() -> None:
    auto = run(ctx=ContextChoice("auto"))
    fixed = run(ctx=ContextChoice("fixed", 500))
    top = run(ctx=ContextChoice("max"))
    mfu = [r.stages["decode"].mfu_trace for r in (auto, fixed, top)]
    assert mfu[0] < mfu[1] < mfu[2]  # type: ignore[operator]
    assert fixed.ctx.ctx_len == 500 and top.ctx.ctx_len == FLOPS.window and auto.ctx.ctx_len is None
    assert fixed.stages["decode"].flops == pytest.approx(6 * (5e8 + 1e5 * 500))
    assert top.stages["decode"].flops == pytest.approx(6 * (5e8 + 1e5 * 1000))
    for stage in ("vision", "prefill"):  # the context mode touches decode only
        assert auto.stages[stage].mfu_trace == top.stages[stage].mfu_trace
    with pytest.raises(MissingInputError, match="pass --ctx-len N"):
        run(ctx=ContextChoice("fixed"))


def _measured(report: MfuReport) -> list[tuple[Any, ...]]:
    return [
        (i.stage, i.image_index, i.flops, i.gpu_busy_ns, i.kernel_sum_ns, i.wall_ns, i.mfu_trace)
        for s in report.stages.values()
        for i in s.instances
        if not i.warmup
    ]


def test_warmup_ranges_change_nothing_when_excluded() -> None:
    with_warmup = run(runner_like_trace(warmup=True)[0])
    without = run(runner_like_trace(warmup=False)[0])
    assert _measured(with_warmup) == _measured(without)
    assert with_warmup.model == without.model


def test_include_warmup_adds_the_warmup_instance() -> None:
    excluded = run()
    included = run(include_warmup=True)
    vision = included.stages["vision"]
    assert [i.warmup for i in vision.instances] == [True, False, False]
    assert vision.instances[0].wall_source == "range"  # no runner wall for warmup rounds
    assert _measured(included) == _measured(excluded)
    assert included.stages["vision"].flops == pytest.approx(3 * FLOPS.vision_per_view)
    assert included.stages["vision"].wall_source == "mixed"


def test_without_metadata_flags_supply_the_facts() -> None:
    report = run(use_meta=False, inputs=StageInputs(prefill_len=LP, decode_tokens=3))
    vision = report.stages["vision"].instances[0]
    # no runner wall: CPU start → later of CPU end (t0 + 5 ms) and last GPU op end (t0 + 2.1 ms)
    assert vision.wall_source == "range"
    assert vision.wall_ns == 5_000_000 - 100
    assert vision.image_index == 0  # the image ranges still pair the stages
    assert report.stages["prefill"].flops == pytest.approx(2 * 1e9 * LP)
    assert any("assumed 'base'" in w for w in report.warnings)


def test_auto_ctx_without_payloads_is_lp_plus_k() -> None:
    trace, _ = runner_like_trace()
    for r in trace.ranges:
        if r["name"] == "decode_step":
            r["payload_int"] = None
    report = run(trace, use_meta=False, inputs=StageInputs(prefill_len=10))
    assert report.ctx.instances[0].ctx_lens == (11, 12, 13)
    assert report.ctx.instances[0].source == "Lp + k"


def test_missing_facts_name_their_flag() -> None:
    with pytest.raises(MissingInputError, match="pass --prefill-len N"):
        run(use_meta=False, inputs=StageInputs())
    trace = SynthTrace()
    for name, t in (("vision", 0), ("prefill", 1_000), ("decode", 2_000)):
        trace.push(name, t, t + 900)
        trace.op(t + 10, t + 100, t + 200)
    with pytest.raises(MissingInputError, match="pass --decode-tokens T"):
        run(trace, use_meta=False, inputs=StageInputs(prefill_len=5))


def test_unknown_stage_name_lists_the_names_present() -> None:
    refs = default_refs(DOMAIN) | {"vision": RangeRef("encoder", DOMAIN)}
    with pytest.raises(SelectionError) as info:
        run(refs=refs)
    message = str(info.value)
    assert "'encoder' in domain 'llm_perf_opt'" in message
    assert "vision@llm_perf_opt" in message and "cub::DeviceScan@CCCL" in message
    assert "--stage vision=NAME" in message


def test_zero_gpu_time_in_a_stage_is_an_error() -> None:
    trace = SynthTrace()
    for name, t, launch in (
        ("vision", 0, True),
        ("prefill", 1_000, False),
        ("decode", 2_000, True),
    ):
        trace.push(name, t, t + 900)
        if launch:
            trace.op(t + 10, t + 100, t + 200)
    with pytest.raises(NoGpuTimeError, match=r"stage prefill .* has no GPU time.*--other-threads"):
        run(trace, use_meta=False, inputs=StageInputs(prefill_len=5, decode_tokens=1))


def test_metadata_image_count_must_match_the_trace() -> None:
    meta = meta_dict(3)
    with pytest.raises(AnalysisError, match=r"2 measured image instance.* lists 3 image"):
        run(meta=meta)


def test_without_a_breakdown_no_stage_has_a_verdict() -> None:
    """The verdict reads the host/GPU breakdown (`verdict.classify`); without API calls there is
    none, whatever the GPU time says."""
    for stage in run().stages.values():
        assert (stage.verdict, stage.advice) == (NO_BREAKDOWN.label, NO_BREAKDOWN.advice)
        assert stage.host is None


def test_utilization_above_one_is_flagged() -> None:
    report = run()
    assert any(w.startswith("decode: trace MBU") for w in report.warnings)
    small = replace(FLOPS, bytes_base=1.0, bytes_per_key=0.0)
    refs = default_refs(DOMAIN)
    ranges, ops = synth_inputs(runner_like_trace()[0], refs)
    quiet = compute_mfu(
        ranges,
        ops,
        refs=refs,
        inputs=StageInputs(meta=parse_meta(meta_dict(), "test")),
        flops_model=small,
        peak=PEAK,
        ctx=ContextChoice(),
    )
    assert not any("> 1" in w for w in quiet.warnings)
