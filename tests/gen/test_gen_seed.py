"""Generation is deterministic, exact in size at every scale, and realistic at full step size."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from benchmarks.gen_trace import generate, plan_trace
from benchmarks.gen_trace.plan import (
    BG_KERNELS_PER_IMAGE,
    FIXED_KERNELS,
    WARMUP_NEW_TOKENS,
    WARMUP_ROUNDS,
)

from tests.helpers.trace_facts import connect, ranges


def _digest(path: Path) -> str:
    con = connect(path)
    try:
        return hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()


def test_same_seed_same_file_other_seed_other_timings(tmp_path: Path) -> None:
    paths = [tmp_path / name / "trace.sqlite" for name in ("a", "b", "c")]
    for path, seed in zip(paths, (7, 7, 8), strict=True):
        path.parent.mkdir()
        generate(path, 1_500, seed=seed)
    assert _digest(paths[0]) == _digest(paths[1])
    assert _digest(paths[0]) != _digest(paths[2])
    query = "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL"
    counts = [connect(p).execute(query).fetchone() for p in paths]
    assert counts == [(1_500,)] * 3


@pytest.mark.parametrize("n_kernels", [2_000, 12_345, 100_000, 1_000_000, 10_000_000])
def test_plan_accounts_for_every_requested_kernel(n_kernels: int) -> None:
    plan = plan_trace(n_kernels)
    k = plan.kernels_per_step
    warmup = plan.vision_kernels + plan.prefill_kernels + (WARMUP_NEW_TOKENS - 1) * k
    per_image = plan.vision_kernels + plan.prefill_kernels + BG_KERNELS_PER_IMAGE
    steps = [plan.step_kernels(j) for j in range(plan.n_images * plan.decode_steps)]
    total = FIXED_KERNELS + WARMUP_ROUNDS * warmup + plan.n_images * per_image + sum(steps)
    assert total == n_kernels
    assert max(steps) - min(steps) <= 1 + plan.extra_per_step
    if n_kernels >= 100_000:
        assert k == 870 and plan.n_images >= 2
    if n_kernels >= 1_000_000:
        assert 200 <= plan.max_new_tokens <= 300


def test_too_few_kernels_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        plan_trace(200)


def test_full_size_decode_steps_launch_hundreds_of_small_kernels(tmp_path: Path) -> None:
    path = tmp_path / "mid.sqlite"
    generate(path, 60_000, seed=1)
    con = connect(path)
    steps = [r for r in ranges(con) if r.name == "decode_step" and r.parent is not None]
    launches = np.asarray(
        con.execute(
            "SELECT r.start, k.end - k.start FROM CUPTI_ACTIVITY_KIND_KERNEL k "
            "JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = k.correlationId "
            "AND r.globalTid = ? ORDER BY r.start",
            (steps[0].gtid,),
        ).fetchall()
    )
    lo = np.searchsorted(launches[:, 0], [s.start for s in steps], side="left")
    hi = np.searchsorted(launches[:, 0], [s.end for s in steps], side="right")
    counts = hi - lo
    assert counts.min() >= 860 and counts.max() <= 880
    in_steps = np.concatenate([launches[a:b, 1] for a, b in zip(lo, hi, strict=True)])
    assert np.median(in_steps) < 10_000 and in_steps.max() <= 20_000
