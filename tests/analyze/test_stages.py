"""Stage ranges into image instances: by the nearest `image` ancestor, else by order; warmup by
path; decode steps by their decode range; two ranges of a stage under one image refused."""

from __future__ import annotations

import pytest

from llm_perf_opt.errors import AnalysisError, SelectionError
from llm_perf_opt.inputs.stage_ranges import decode_steps, default_refs, group_instances
from tests.helpers.synth import DOMAIN, SynthTrace, runner_like_trace

REFS = default_refs(DOMAIN)


def test_instances_follow_their_image_ranges_and_skip_warmup() -> None:
    tr, _ = runner_like_trace(n_images=2)
    ranges = tr.attribution().ranges
    instances = group_instances(ranges, REFS, include_warmup=False)
    assert [i.image_index for i in instances] == [0, 1]
    assert not any(i.warmup for i in instances)
    images = ranges.filter(REFS["image"].expr(), ~ranges["path"].str.starts_with("warmup"))
    for inst, image_id in zip(instances, images["range_id"], strict=True):
        assert {m["parent_id"] for m in inst.members.values()} == {image_id}
        assert inst.start_ns == images.filter(range_id=image_id)["cpu_start_ns"].item()
    with_warmup = group_instances(ranges, REFS, include_warmup=True)
    assert [i.warmup for i in with_warmup] == [True, False, False]


def test_without_image_ranges_the_kth_range_of_each_stage_is_instance_k() -> None:
    tr = SynthTrace()
    for k in range(2):
        t0 = 1_000_000 * (k + 1)
        for j, stage in enumerate(("vision", "prefill", "decode")):
            tr.push(stage, t0 + j * 100_000, t0 + j * 100_000 + 50_000)
            tr.op(t0 + j * 100_000 + 10, t0 + j * 100_000 + 20, t0 + j * 100_000 + 40)
    instances = group_instances(tr.attribution().ranges, REFS, include_warmup=False)
    assert [i.image_index for i in instances] == [None, None]
    for k, inst in enumerate(instances):
        starts = [inst.members[s]["cpu_start_ns"] for s in ("vision", "prefill", "decode")]
        assert starts == [1_000_000 * (k + 1) + j * 100_000 for j in range(3)]


def test_a_stage_missing_from_an_instance_is_a_warning() -> None:
    tr = SynthTrace()
    tr.push("image", 0, 1_000_000, 0)
    tr.push("vision", 10, 100_000)
    tr.push("prefill", 200_000, 300_000)
    tr.push("image", 2_000_000, 3_000_000, 1)
    tr.push("prefill", 2_200_000, 2_300_000)
    warnings: list[str] = []
    instances = group_instances(
        tr.attribution().ranges, REFS, False, ("vision", "prefill"), warnings
    )
    assert [sorted(i.members) for i in instances] == [["prefill", "vision"], ["prefill"]]
    assert warnings == ["vision: 1 range(s) for 2 instance(s)"]


def test_two_ranges_of_a_stage_under_one_image_are_refused() -> None:
    tr = SynthTrace()
    tr.push("image", 0, 1_000_000, 0)
    tr.push("prefill", 10, 100)
    tr.push("prefill", 200, 300)
    ranges = tr.attribution().ranges
    first, second = ranges.filter(REFS["prefill"].expr())["range_id"].to_list()
    with pytest.raises(AnalysisError, match=rf"two prefill ranges .* \(ids {first} and {second}\)"):
        group_instances(ranges, REFS, False, ("prefill",))


def test_only_warmup_ranges_or_no_range_are_selection_errors() -> None:
    tr = SynthTrace()
    tr.push("warmup", 0, 1_000)
    tr.push("prefill", 10, 100)
    ranges = tr.attribution().ranges
    with pytest.raises(SelectionError, match="pass --include-warmup"):
        group_instances(ranges, REFS, False, ("prefill",))
    with pytest.raises(SelectionError, match="no NVTX range 'decode' in domain"):
        group_instances(ranges, REFS, False, ("prefill", "decode"))


def test_decode_steps_are_the_step_ranges_under_each_decode_range() -> None:
    tr, _ = runner_like_trace(n_images=2, warmup=False)
    ranges = tr.attribution().ranges
    instances = group_instances(ranges, REFS, include_warmup=False)
    steps = decode_steps(ranges, REFS["decode_step"], instances)
    for inst in instances:
        decode = inst.members["decode"]
        nested = steps[int(decode["range_id"])]
        assert [s["payload_int"] for s in nested] == [301, 302, 303]
        assert all(s["parent_id"] == decode["range_id"] for s in nested)
        assert [s["cpu_start_ns"] for s in nested] == sorted(s["cpu_start_ns"] for s in nested)
