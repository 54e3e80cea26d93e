"""The MFU report of a real trace, rebuilt from independent pieces (the acceptance oracle).

Nothing here calls `llm_perf_opt.metrics.mfu` or `llm_perf_opt.report`: FLOPs and bytes come from
`flops.analytic` and the config the runner recorded in the trace's metadata mark, GPU time from
`attribution.attribute` on the stage ranges (inclusive columns), the peak from NVIDIA's datasheet
(typed in here, not read from `llm_perf_opt.peaks.table`), wall time from the metadata's
`images[i].wall_s`. Warmup ranges are recognized by time containment in the `warmup` range, not by
the analyzer's path rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import polars as pl

from llm_perf_opt.attribution import Attribution
from llm_perf_opt.flops import analytic, traffic
from llm_perf_opt.flops.configs import ModelConfig
from llm_perf_opt.kernels.categories import CATEGORIES, classify_names
from tests.helpers.recompute_host import HostReference, with_host

STAGES: Final = ("vision", "prefill", "decode")
GPU_NAME: Final = "NVIDIA H100 80GB HBM3"
# H100 SXM (nsys's `NVIDIA H100 80GB HBM3`), dense, no sparsity; HBM3 bandwidth.
PEAK_BF16_FLOPS: Final = 989.4e12
PEAK_BANDWIDTH_BPS: Final = 3.35e12
WINDOW: Final = 8192  # DeepSeek-OCR decoder max_position_embeddings
TOP_KERNELS: Final = 10
REL: Final = 1e-9


def config_of(meta: Mapping[str, Any]) -> ModelConfig:
    return ModelConfig.from_dict(meta["model"]["config"])


def _inside(inner: Mapping[str, Any], outer: Mapping[str, Any]) -> bool:
    """Push/pop nesting: same thread, CPU interval contained."""
    return bool(
        inner["pid"] == outer["pid"]
        and inner["tid"] == outer["tid"]
        and outer["cpu_start_ns"] <= inner["cpu_start_ns"]
        and inner["cpu_start_ns"] + inner["cpu_duration_ns"]
        <= outer["cpu_start_ns"] + outer["cpu_duration_ns"]
    )


def runner_ranges(attr: Attribution) -> list[dict[str, Any]]:
    """The runner's ranges (domain llm_perf_opt) in CPU start order."""
    frame = attr.ranges.filter(pl.col("domain") == "llm_perf_opt").sort("cpu_start_ns")
    return frame.to_dicts()


def measured_instances(attr: Attribution) -> list[dict[str, Any]]:
    """Per measured image (outside `warmup`), in order: its `image` row, one row per stage and
    its `decode_step` rows."""
    rows = runner_ranges(attr)
    warmups = [r for r in rows if r["name"] == "warmup"]
    measured = [
        r for r in rows if not any(_inside(r, w) for w in warmups) and r["name"] != "warmup"
    ]
    out = []
    for image in (r for r in measured if r["name"] == "image"):
        members = [r for r in measured if r is not image and _inside(r, image)]
        inst: dict[str, Any] = {"image": image}
        for stage in STAGES:
            (inst[stage],) = [r for r in members if r["name"] == stage]
        inst["steps"] = [r for r in members if r["name"] == "decode_step"]
        out.append(inst)
    return out


def image_layout(cfg: ModelConfig, image: Mapping[str, Any]) -> analytic.ImageLayout:
    """Views and LLM positions of one metadata image (its mode and crop grid)."""
    grid = image["crop_grid"]
    return analytic.image_layout(cfg, image["mode"], (grid[0], grid[1]) if grid else None)


def ctx_lens_for(mode: str, ctx_len: int | None, real_lens: Sequence[int]) -> list[int]:
    """C of each decode step under a context mode (docs/mfu-math.md)."""
    if mode == "fixed":
        assert ctx_len is not None
        return [ctx_len] * len(real_lens)
    if mode == "max":
        return [WINDOW] * len(real_lens)
    return list(real_lens)


def _idle(busy_s: float, wall_s: float) -> float:
    return min(1.0, max(0.0, 1.0 - busy_s / wall_s))


def _top_kernels(
    attr: Attribution,
    kernel_names: pl.DataFrame,
    range_ids: list[int] | None,
    total_ns: int | None = None,
) -> list[Any]:
    """The top kernels of `range_ids` (None: of the whole trace, shares of `total_ns`)."""
    kernels = attr.ops.filter(pl.col("kind") == "kernel")
    if range_ids is not None:
        kernels = kernels.filter(pl.col("range_id").is_in(range_ids))
    kernels = kernels.with_columns(ns=pl.col("end_ns") - pl.col("start_ns"))
    total_ns = int(kernels["ns"].sum()) if total_ns is None else total_ns
    grouped = (
        kernels.group_by("name_id")
        .agg(count=pl.len(), total_ns=pl.col("ns").sum())
        .sort(["total_ns", "name_id"], descending=[True, False])
        .head(TOP_KERNELS)
        .join(kernel_names, on="name_id", how="left", maintain_order="left")
    )
    return [
        {
            "name": row["name"],
            "count": row["count"],
            "total_s": row["total_ns"] / 1e9,
            "mean_us": row["total_ns"] / row["count"] / 1e3,
            "share": row["total_ns"] / total_ns,
        }
        for row in grouped.iter_rows(named=True)
    ]


def expected_report(
    meta: Mapping[str, Any],
    attr: Attribution,
    kernel_names: pl.DataFrame,
    *,
    mode: str = "auto",
    ctx_len: int | None = None,
    host: HostReference | None = None,
) -> dict[str, Any]:
    """The `--format json` document's numbers (and the strings that follow from them); with
    `host`, the host/GPU breakdown too."""
    cfg = config_of(meta)
    text = cfg.text
    images = meta["images"]
    instances = measured_instances(attr)
    assert len(instances) == len(images)
    n_kernels = (
        attr.ops.filter(pl.col("kind") == "kernel", pl.col("range_id").is_not_null())
        .group_by("range_id")
        .agg(n=pl.len())
    )
    kernels_of = dict(n_kernels.iter_rows())
    # CUDA graph executions traced whole: counted and timed apart from the kernels
    graph_rows = (
        attr.ops.filter(pl.col("kind") == "graph", pl.col("range_id").is_not_null())
        .group_by("range_id")
        .agg(n=pl.len(), ns=(pl.col("end_ns") - pl.col("start_ns")).sum())
    )
    graphs_of = {rid: (n, ns) for rid, n, ns in graph_rows.iter_rows()}
    per_stage: dict[str, list[dict[str, Any]]] = {s: [] for s in STAGES}
    moved = dict.fromkeys(STAGES, 0.0)
    attention = dict.fromkeys(STAGES, 0)
    contexts, steps_out = [], []
    for pos, (inst, img) in enumerate(zip(instances, images, strict=True)):
        layout = image_layout(cfg, img)
        lp = layout.image_positions + meta["prompt_text_tokens"]
        steps = meta["max_new_tokens"] - 1
        real_lens = [lp + k for k in range(1, steps + 1)]
        lens = ctx_lens_for(mode, ctx_len, real_lens)
        flops = {
            "vision": analytic.vision_flops(cfg, layout).total_flops,
            "prefill": analytic.prefill_flops(text, lp).total_flops,
            "decode": sum(analytic.decode_flops_per_token(text, c).total_flops for c in lens),
        }
        attention["vision"] += _attention(analytic.vision_flops(cfg, layout))
        attention["prefill"] += _attention(analytic.prefill_flops(text, lp))
        attention["decode"] += sum(
            _attention(analytic.decode_flops_per_token(text, c)) for c in lens
        )
        decode_bytes = float(
            sum(sum(analytic.decode_bytes_per_step(text, c, meta["dtype"]).values()) for c in lens)
        )
        moved["vision"] += sum(traffic.vision_bytes(cfg, layout, meta["dtype"]).values())
        moved["prefill"] += sum(traffic.decoder_bytes(text, lp, lp, meta["dtype"]).values())
        moved["decode"] += sum(
            sum(traffic.decoder_bytes(text, 1, c, meta["dtype"]).values()) for c in lens
        )
        contexts.append(
            {
                "instance": pos,
                "image_index": img["index"],
                "prefill_len": lp,
                "decode_steps": steps,
                "ctx_len_first": lens[0],
                "ctx_len_last": lens[-1],
                "ctx_len_mean": sum(lens) / len(lens),
                "ctx_lens": lens,
            }
        )
        for k, (row, c) in enumerate(zip(inst["steps"], lens, strict=True)):
            step_flops = analytic.decode_flops_per_token(text, c).total_flops
            steps_out.append(
                {
                    "range_id": row["range_id"],
                    "flops": step_flops,
                    "mfu_trace": step_flops / (PEAK_BF16_FLOPS * row["gpu_busy_ns"] / 1e9),
                    "instance": pos,
                    "step": k + 1,
                    "ctx_len": c,
                    "payload_ctx_len": real_lens[k],
                    "gpu_busy_s": row["gpu_busy_ns"] / 1e9,
                    "cpu_s": row["cpu_duration_ns"] / 1e9,
                    "wall_s": img["decode_step_wall_s"][k],
                    "wall_source": "runner",
                    "n_gpu_ops": row["n_gpu_ops"],
                }
            )
        for stage in STAGES:
            row = inst[stage]
            busy_s = row["gpu_busy_ns"] / 1e9
            wall_s = img["wall_s"][stage]
            out: dict[str, Any] = {
                "instance": pos,
                "image_index": inst["image"]["payload_int"],
                "warmup": False,
                "range_id": row["range_id"],
                "flops": flops[stage],
                "gpu_busy_s": busy_s,
                "kernel_sum_s": row["kernel_sum_ns"] / 1e9,
                "cpu_s": row["cpu_duration_ns"] / 1e9,
                "wall_s": wall_s,
                "wall_source": "runner",
                "mfu_trace": flops[stage] / (PEAK_BF16_FLOPS * busy_s),
                "mfu_wall": flops[stage] / (PEAK_BF16_FLOPS * wall_s),
                "idle_fraction": _idle(busy_s, wall_s),
                "n_gpu_ops": row["n_gpu_ops"],
                "n_kernels": kernels_of.get(row["range_id"], 0),
                "graph_ops": graphs_of.get(row["range_id"], (0, 0))[0],
                "graph_s": graphs_of.get(row["range_id"], (0, 0))[1] / 1e9,
            }
            if stage == "decode":
                out |= {
                    "decode_steps": steps,
                    "decode_bytes": decode_bytes,
                    "mbu_trace": decode_bytes / (PEAK_BANDWIDTH_BPS * busy_s),
                    "mbu_wall": decode_bytes / (PEAK_BANDWIDTH_BPS * wall_s),
                }
            per_stage[stage].append(out)
    stages = {
        stage: _stage(stage, rows, attr, kernel_names, moved[stage], attention[stage])
        for stage, rows in per_stage.items()
    }
    if host is not None:
        with_host(stages, instances, host, PEAK_BF16_FLOPS, steps_out)
    flops_total = sum(s["flops"] for s in stages.values())
    busy_total = sum(s["gpu_busy_s"] for s in stages.values())
    wall_total = sum(s["wall_s"] for s in stages.values())
    decode = stages["decode"]
    single = {"fixed": ctx_len, "max": WINDOW}.get(mode)
    return {
        "gpu_name": GPU_NAME,
        "dtype": "bf16",
        "peak_flops": PEAK_BF16_FLOPS,
        "peak_bandwidth_Bps": PEAK_BANDWIDTH_BPS,
        "peak_flops_table": PEAK_BF16_FLOPS,
        "peak_bandwidth_table": PEAK_BANDWIDTH_BPS,
        "ridge_flops_per_byte": PEAK_BF16_FLOPS / PEAK_BANDWIDTH_BPS,
        "ctx_mode": mode,
        "ctx_len": single,
        "context": {"mode": mode, "ctx_len": single, "window": WINDOW, "instances": contexts},
        "include_warmup": False,
        "stages": stages,
        "model": {
            "flops": flops_total,
            "gpu_busy_s": busy_total,
            "wall_s": wall_total,
            "mfu_trace": flops_total / (PEAK_BF16_FLOPS * busy_total),
            "mfu_wall": flops_total / (PEAK_BF16_FLOPS * wall_total),
            "by_peak": {
                "table": {
                    "mfu_trace": flops_total / (PEAK_BF16_FLOPS * busy_total),
                    "mfu_wall": flops_total / (PEAK_BF16_FLOPS * wall_total),
                }
            },
        },
        "mbu": {
            "decode": {
                "trace": decode["mbu_trace"],
                "wall": decode["mbu_wall"],
                "bytes_per_step": decode["bytes_per_step"],
                "peak_bandwidth_Bps": PEAK_BANDWIDTH_BPS,
            }
        },
        "decode_steps": steps_out,
        "decode_step_categories": _median_step(steps_out, instances, attr, kernel_names),
        **trace_expected(attr, kernel_names),
        "static_compute": None,
        "warnings": [],
    }


def _attention(flops: analytic.Flops) -> int:
    """The attention score and context matmuls of a FLOP count (docs/flops.md)."""
    return sum(v for k, v in flops.blocks.items() if k.endswith(".attn_scores"))


def _categories(ops: pl.DataFrame, kernel_names: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Time, share and count per category of `ops` (kernels by name, copies and memsets as
    memory), summed in integer ns."""
    classes = classify_names(kernel_names).with_columns(pl.col("category").cast(pl.String))
    named = ops.join(classes, on="name_id", how="left").with_columns(
        category=pl.when(pl.col("kind").cast(pl.String).is_in(["memcpy", "memset"]))
        .then(pl.lit("memory"))
        .otherwise(pl.col("category")),
        ns=pl.col("end_ns") - pl.col("start_ns"),
    )
    total = int(named["ns"].sum())
    sums = named.group_by("category").agg(ns=pl.col("ns").sum(), n=pl.len())
    by = {r["category"]: r for r in sums.iter_rows(named=True)}
    return {
        c: {"time_s": by[c]["ns"] / 1e9, "share": by[c]["ns"] / total, "n_kernels": by[c]["n"]}
        for c in CATEGORIES
        if c in by
    }


def _median_step(
    steps: list[dict[str, Any]],
    instances: list[dict[str, Any]],
    attr: Attribution,
    kernel_names: pl.DataFrame,
) -> dict[str, Any]:
    """The lower median step by GPU busy time (ties: instance, step) and the categories of the
    kernels its decode range launched while the step range was open."""
    ranked = sorted(steps, key=lambda d: (d["gpu_busy_s"], d["instance"], d["step"]))
    d = ranked[(len(ranked) - 1) // 2]
    inst = instances[d["instance"]]
    (row,) = [r for r in inst["steps"] if r["range_id"] == d["range_id"]]
    ops = attr.ops.filter(
        pl.col("kind") == "kernel",
        pl.col("range_id") == inst["decode"]["range_id"],
        pl.col("launch_ns").is_between(row["start_ns"], row["end_ns"]),
    )
    return {
        "instance": d["instance"],
        "step": d["step"],
        "range_id": d["range_id"],
        "gpu_busy_s": d["gpu_busy_s"],
        "categories": _categories(ops, kernel_names),
    }


def trace_expected(attr: Attribution, kernel_names: pl.DataFrame) -> dict[str, Any]:
    """`trace_view` and `trace_categories`: every op of the trace, attributed or not."""
    ops = attr.ops.with_columns(ns=pl.col("end_ns") - pl.col("start_ns"))
    busy = 0  # per device: the span less the gaps between the running latest end and a start
    for _, part in ops.sort("start_ns", "end_ns").group_by("device_id"):
        start, end = part["start_ns"].to_numpy(), part["end_ns"].to_numpy()
        reach = np.maximum.accumulate(end)
        busy += int(reach[-1] - start[0] - np.maximum(start[1:] - reach[:-1], 0).sum())
    kernels = ops.filter(pl.col("kind") == "kernel")
    return {
        "trace_view": {
            "gpu_busy_s": busy / 1e9,
            "op_sum_s": int(ops["ns"].sum()) / 1e9,
            "n_ops": ops.height,
            "top_kernels": _top_kernels(attr, kernel_names, None, int(kernels["ns"].sum())),
        },
        "trace_categories": _categories(attr.ops, kernel_names),
    }


def _stage(
    stage: str,
    rows: list[dict[str, Any]],
    attr: Attribution,
    kernel_names: pl.DataFrame,
    bytes_moved: float,
    attention: int,
) -> dict[str, Any]:
    """Sums over instances, then ratios of the sums; `bytes_moved` is the stage's traffic."""

    def total(key: str) -> Any:
        return sum(r[key] for r in rows)

    flops, busy_s, wall_s = total("flops"), total("gpu_busy_s"), total("wall_s")
    kernel_s, n_kernels = total("kernel_sum_s"), total("n_kernels")
    mean_kernel_ns = kernel_s * 1e9 / n_kernels
    mfu_trace = flops / (PEAK_BF16_FLOPS * busy_s)
    ids = [r["range_id"] for r in rows]
    ops = attr.ops.filter(pl.col("kind") == "kernel", pl.col("range_id").is_in(ids))
    categories = _categories(ops, kernel_names)
    for name, part in (("gemm", flops - attention), ("attention", attention)):
        if name in categories:
            rate = part / categories[name]["time_s"]
            categories[name] |= {
                "flops": part,
                "achieved_flops_per_s": rate,
                "peak_fraction": rate / PEAK_BF16_FLOPS,
            }
    out: dict[str, Any] = {
        "range": stage,
        "domain": "llm_perf_opt",
        "n_instances": len(rows),
        "flops": flops,
        "gpu_busy_s": busy_s,
        "kernel_sum_s": kernel_s,
        "cpu_s": total("cpu_s"),
        "wall_s": wall_s,
        "wall_source": "runner",
        "mfu_trace": mfu_trace,
        "mfu_wall": flops / (PEAK_BF16_FLOPS * wall_s),
        "idle_fraction": _idle(busy_s, wall_s),
        "n_gpu_ops": total("n_gpu_ops"),
        "n_kernels": n_kernels,
        "graph_ops": total("graph_ops"),
        "graph_s": total("graph_s"),
        "mean_kernel_us": mean_kernel_ns / 1e3,
        "top_kernels": _top_kernels(attr, kernel_names, [r["range_id"] for r in rows]),
        "categories": categories,
        "instances": rows,
        "bytes_moved": bytes_moved,
        "arithmetic_intensity": flops / bytes_moved,
        "achieved_flops_per_s": flops / busy_s,
        "bound": "memory"
        if flops / bytes_moved < PEAK_BF16_FLOPS / PEAK_BANDWIDTH_BPS
        else "compute",
        "by_peak": {
            "table": {
                "mfu_trace": mfu_trace,
                "mfu_wall": flops / (PEAK_BF16_FLOPS * wall_s),
                "mbu_trace": None,
                "mbu_wall": None,
            }
        },
    }
    if stage == "decode":
        steps, n_bytes = total("decode_steps"), total("decode_bytes")
        mbu_trace = n_bytes / (PEAK_BANDWIDTH_BPS * busy_s)
        out |= {
            "decode_steps": steps,
            "kernels_per_step": n_kernels / steps,
            "step_gpu_busy_s": busy_s / steps,
            "step_wall_s": wall_s / steps,
            "decode_bytes": n_bytes,
            "bytes_per_step": n_bytes / steps,
            "mbu_trace": mbu_trace,
            "mbu_wall": n_bytes / (PEAK_BANDWIDTH_BPS * wall_s),
        }
        out["by_peak"]["table"] |= {
            "mbu_trace": mbu_trace,
            "mbu_wall": n_bytes / (PEAK_BANDWIDTH_BPS * wall_s),
        }
    return out


def _has_number(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_number(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_number(v) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def assert_matches(actual: Any, expected: Any, path: str = "$") -> int:
    """Every number in `actual` equals the recomputed one (relative 1e-9; integers exactly), and
    every expected key is present. Returns how many numbers were compared.

    A key of `actual` missing from `expected` is allowed only if it holds no number: so a number
    the report gains later fails here until this module recomputes it too.
    """
    if isinstance(actual, dict):
        assert isinstance(expected, dict), f"{path}: expected {expected!r}"
        missing = set(expected) - set(actual)
        assert not missing, f"{path}: keys {sorted(missing)} absent from the report"
        compared = 0
        for key, value in actual.items():
            if key in expected:
                compared += assert_matches(value, expected[key], f"{path}.{key}")
            else:
                assert not _has_number(value), f"{path}.{key}: a number the test did not recompute"
        return compared
    if isinstance(actual, list):
        assert isinstance(expected, list), f"{path}: expected {expected!r}"
        assert len(actual) == len(expected), (
            f"{path}: {len(actual)} items, expected {len(expected)}"
        )
        return sum(
            assert_matches(a, e, f"{path}[{i}]")
            for i, (a, e) in enumerate(zip(actual, expected, strict=True))
        )
    if isinstance(actual, bool) or actual is None or isinstance(actual, str):
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        return 0
    assert isinstance(expected, int | float) and not isinstance(expected, bool), path
    if isinstance(actual, int) and isinstance(expected, int):
        assert actual == expected, f"{path}: {actual} != {expected}"
    else:
        assert math.isclose(actual, expected, rel_tol=REL, abs_tol=0.0), (
            f"{path}: {actual!r} != {expected!r}"
        )
    return 1
