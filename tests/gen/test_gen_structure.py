"""The generated trace has the structure of a profiled DeepSeek-OCR run (read back by plain SQL)."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from typing import Any

import pytest

from llm_perf_opt.inputs.run_meta import parse_meta
from tests.helpers.generated import TINY_KERNELS, Tiny
from tests.helpers.paths import SRC
from tests.helpers.trace_facts import PROCESS_MASK, Op, Range, connect, innermost

SCHEMA = SRC / "llm_perf_opt" / "schemas" / "run_meta.schema.json"
STAGE_PARENTS: dict[str, set[str | None]] = {
    "warmup": {None},
    "image": {None, "warmup"},
    "vision": {"image"},
    "prefill": {"image"},
    "decode": {"image"},
    "decode_step": {"decode"},
}


def _meta(tiny: Tiny) -> dict[str, Any]:
    rows = (
        connect(tiny.path)
        .execute(
            "SELECT coalesce(e.text, s.value), e.domainId FROM NVTX_EVENTS e "
            "LEFT JOIN StringIds s ON s.id = e.textId WHERE e.eventType = 34"
        )
        .fetchall()
    )
    assert len(rows) == 1
    found: dict[str, Any] = json.loads(rows[0][0])
    return found


def _ours(tiny: Tiny) -> list[Range]:
    return [r for r in tiny.ranges if r.domain == "llm_perf_opt"]


def _main_gtid(tiny: Tiny) -> int:
    (warmup,) = [r for r in _ours(tiny) if r.name == "warmup"]
    return warmup.gtid


def _launched_in(tiny: Tiny, r: Range, table: str = "CUPTI_ACTIVITY_KIND_KERNEL") -> list[Op]:
    return [
        o
        for o in tiny.ops
        if o.table == table and o.gtid == r.gtid and r.start <= o.api_start and o.api_end <= r.end
    ]


def _measured_images(tiny: Tiny) -> list[Range]:
    return [r for r in _ours(tiny) if r.name == "image" and r.parent is None]


def test_kernel_rows_number_exactly_the_request(tiny: Tiny) -> None:
    query = "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL"
    (count,) = connect(tiny.path).execute(query).fetchone()
    assert count == TINY_KERNELS == tiny.summary.n_kernels


def test_every_gpu_op_joins_exactly_one_launch_call_that_started_before_it(tiny: Tiny) -> None:
    con = connect(tiny.path)
    for table in ("KERNEL", "MEMCPY", "MEMSET"):
        (rows,) = con.execute(f"SELECT count(*) FROM CUPTI_ACTIVITY_KIND_{table}").fetchone()
        joined = [o for o in tiny.ops if o.table.endswith(table)]
        assert rows > 0 and len(joined) == rows, table
    assert all(o.api_start < o.start and o.start < o.end for o in tiny.ops)
    (calls, distinct) = con.execute(
        f"SELECT count(*), count(DISTINCT (globalTid & {PROCESS_MASK:#x}) || ':' || correlationId) "
        "FROM CUPTI_ACTIVITY_KIND_RUNTIME"
    ).fetchone()
    assert calls == distinct
    in_call_order = con.execute(
        "SELECT correlationId FROM CUPTI_ACTIVITY_KIND_RUNTIME ORDER BY start"
    )
    ids = [c for (c,) in in_call_order]
    assert ids == sorted(ids)


def test_ops_on_one_stream_never_overlap_and_streams_run_concurrently(tiny: Tiny) -> None:
    by_stream: dict[int, list[Op]] = defaultdict(list)
    for o in tiny.ops:
        by_stream[o.stream].append(o)
    assert len(by_stream) >= 2
    for stream_ops in by_stream.values():
        stream_ops.sort(key=lambda o: o.start)
        assert all(a.end <= b.start for a, b in itertools.pairwise(stream_ops))
    main, other = sorted(by_stream.values(), key=len, reverse=True)[:2]
    assert any(a.start < b.end and b.start < a.end for a in main for b in other)


def test_graph_replays_share_the_correlation_id_of_one_graph_launch(tiny: Tiny) -> None:
    kernels = [o for o in tiny.ops if o.table.endswith("KERNEL")]
    by_correlation: dict[int, list[Op]] = defaultdict(list)
    for o in kernels:
        by_correlation[o.correlation].append(o)
    replays = [group for group in by_correlation.values() if len(group) > 1]
    assert replays
    for group in replays:
        assert {o.api for o in group} == {"cudaGraphLaunch_v10000"}
        nodes = [o.graph_node for o in group]
        assert None not in nodes and len(set(nodes)) == len(nodes) >= 2
    assert all(o.graph_node is None for o in kernels if len(by_correlation[o.correlation]) == 1)
    steps = [r for r in _ours(tiny) if r.name == "decode_step"]
    for step in steps:
        assert len({o.correlation for o in _launched_in(tiny, step) if o.graph_node}) == 1


def test_stage_ranges_nest_as_the_runner_emits_them(tiny: Tiny) -> None:
    ours = _ours(tiny)
    assert {r.name for r in ours} == set(STAGE_PARENTS)
    for r in ours:
        parent = r.parent.name if r.parent is not None else None
        assert parent in STAGE_PARENTS[r.name], r.path()
        assert r.event_type == 59 and r.text_id is not None  # registered names, as `nvtx` writes
    meta = _meta(tiny)
    (warmup,) = [r for r in ours if r.name == "warmup"]
    assert [c.payload for c in warmup.children] == list(range(meta["warmup"]["rounds"]))
    images = _measured_images(tiny)
    assert [r.payload for r in images] == [im["index"] for im in meta["images"]]
    for image in [*warmup.children, *images]:
        assert [c.name for c in image.children] == ["vision", "prefill", "decode"]


def test_decode_steps_carry_the_context_lengths_of_the_metadata(tiny: Tiny) -> None:
    meta = _meta(tiny)
    for image, facts in zip(_measured_images(tiny), meta["images"], strict=True):
        decode = image.children[2]
        steps = [c.payload for c in decode.children]
        assert {c.name for c in decode.children} == {"decode_step"}
        assert len(steps) == facts["decode_steps"] == meta["max_new_tokens"] - 1
        lp = facts["image_positions"] + meta["prompt_text_tokens"]
        assert facts["prefill_len"] == lp
        assert steps == facts["decode_context_lens"] == [lp + k for k in range(1, len(steps) + 1)]
    (warmup,) = [r for r in _ours(tiny) if r.name == "warmup"]
    for image in warmup.children:
        assert len(image.children[2].children) == meta["warmup"]["max_new_tokens"] - 1


def test_wall_times_are_the_stage_range_durations(tiny: Tiny) -> None:
    meta = _meta(tiny)
    for image, facts in zip(_measured_images(tiny), meta["images"], strict=True):
        for stage in image.children:
            assert facts["wall_s"][stage.name] == pytest.approx((stage.end - stage.start) / 1e9)
        steps = [(s.end - s.start) / 1e9 for s in image.children[2].children]
        assert facts["decode_step_wall_s"] == pytest.approx(steps)
        assert sum(steps) <= facts["wall_s"]["decode"]


def test_each_decode_step_launches_the_same_number_of_kernels_give_or_take_one(tiny: Tiny) -> None:
    steps = [s for image in _measured_images(tiny) for s in image.children[2].children]
    counts = [len(_launched_in(tiny, s)) for s in steps]
    assert min(counts) >= 32 and max(counts) - min(counts) <= 1


def test_cccl_ranges_are_the_nonzero_calls_of_moe_routing(tiny: Tiny) -> None:
    """As in a real capture: Reduce::Sum, the count copied home and waited for, Select::Flagged."""
    cccl = sorted((r for r in tiny.ranges if r.domain == "CCCL"), key=lambda r: r.start)
    assert [r.name for r in cccl[:2]] == ["cub::DeviceReduce::Sum", "cub::DeviceSelect::Flagged"]
    assert len(cccl) % 2 == 0 and cccl[::2] and cccl[1::2]
    assert {r.name for r in cccl[::2]} == {"cub::DeviceReduce::Sum"}
    assert {r.name for r in cccl[1::2]} == {"cub::DeviceSelect::Flagged"}
    con = connect(tiny.path)
    for count, select in zip(cccl[::2], cccl[1::2], strict=True):
        for r in (count, select):
            assert r.parent is not None and r.parent.name in {"prefill", "decode_step"}
            assert r.gtid == r.parent.gtid and r.text_id is not None
            assert len(_launched_in(tiny, r)) == 2
        copies = [
            o
            for o in tiny.ops
            if o.table.endswith("MEMCPY") and count.end < o.api_start < select.start
        ]
        syncs = con.execute(
            "SELECT r.start, r.end FROM CUPTI_ACTIVITY_KIND_RUNTIME r JOIN StringIds s "
            "ON s.id = r.nameId WHERE s.value = 'cudaStreamSynchronize_v3020' "
            "AND r.globalTid = ? AND r.start > ? AND r.end < ?",
            (count.gtid, count.end, select.start),
        ).fetchall()
        assert len(copies) == len(syncs) == 1
        assert syncs[0][1] > copies[0].end  # the host waited for the copy
    assert {r.parent.name for r in cccl if r.parent} == {"prefill", "decode_step"}


def test_domains_are_created_and_named_per_process(tiny: Tiny) -> None:
    rows = (
        connect(tiny.path)
        .execute("SELECT eventType, text, domainId FROM NVTX_EVENTS WHERE eventType IN (75, 76)")
        .fetchall()
    )
    created = {text: domain for event, text, domain in rows if event == 75}
    assert created.keys() == {"llm_perf_opt", "CCCL"} and len(set(created.values())) == 2
    assert [domain for event, _, domain in rows if event == 76] == [created["llm_perf_opt"]]


def test_a_second_thread_launches_on_its_own_stream_inside_and_outside_its_range(
    tiny: Tiny,
) -> None:
    main = _main_gtid(tiny)
    theirs = [o for o in tiny.ops if o.gtid != main]
    assert {o.gtid & PROCESS_MASK for o in theirs} == {main & PROCESS_MASK}
    assert {o.stream for o in theirs}.isdisjoint({o.stream for o in tiny.ops if o.gtid == main})
    inside = [innermost(tiny.ranges, o) for o in theirs if o.table.endswith("KERNEL")]
    assert {r.name if r else None for r in inside} == {"prefetch_next_image", None}
    thread_ranges = [r for r in tiny.ranges if r.gtid != main]
    assert thread_ranges and all(r.domain == "" and r.text_id is None for r in thread_ranges)


def test_some_kernels_are_launched_outside_every_range(tiny: Tiny) -> None:
    main = _main_gtid(tiny)
    outside = [
        o
        for o in tiny.ops
        if o.table.endswith("KERNEL") and o.gtid == main and innermost(tiny.ranges, o) is None
    ]
    assert len(outside) >= 6


def test_model_loading_is_a_start_end_range_that_ends_on_its_thread(tiny: Tiny) -> None:
    (load,) = [r for r in tiny.ranges if r.event_type == 60]
    assert load.name == "load_model" and load.domain == "" and load.parent is None
    copies = _launched_in(tiny, load, "CUPTI_ACTIVITY_KIND_MEMCPY")
    assert copies and _launched_in(tiny, load)
    row = connect(tiny.path).execute(
        "SELECT rangeId, endGlobalTid FROM NVTX_EVENTS WHERE rowid = ?", (load.row,)
    )
    (range_id, end_thread) = row.fetchone()
    assert range_id is not None and end_thread is None


def test_kernel_durations_are_those_of_each_stage(tiny: Tiny) -> None:
    ours = _ours(tiny)
    for step in (r for r in ours if r.name == "decode_step"):
        durations = [o.end - o.start for o in _launched_in(tiny, step)]
        assert min(durations) >= 1_000 and max(durations) <= 20_000
    for stage in (r for r in ours if r.name in {"vision", "prefill"}):
        gemms = [o.end - o.start for o in _launched_in(tiny, stage) if o.name.startswith("nvjet")]
        assert gemms and min(gemms) >= 50_000 and max(gemms) <= 500_000
    kinds = Counter(o.name for o in tiny.ops if o.table.endswith("KERNEL"))
    assert len(kinds) >= 20


def test_run_metadata_mark_is_valid_and_follows_the_last_image(tiny: Tiny) -> None:
    meta = _meta(tiny)
    parse_meta(meta, "generated trace")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    assert meta["model"]["config"]["family"] == meta["model"]["family"] == "deepseek-ocr"
    (start, domain, color) = (
        connect(tiny.path)
        .execute("SELECT start, domainId, color FROM NVTX_EVENTS WHERE eventType = 34")
        .fetchone()
    )
    assert start >= _measured_images(tiny)[-1].end
    created = connect(tiny.path).execute(
        "SELECT domainId FROM NVTX_EVENTS WHERE eventType = 75 AND text = 'llm_perf_opt'"
    )
    assert domain == created.fetchone()[0] and color is not None
    assert len(meta["images"]) == len(_measured_images(tiny)) >= 2
