"""Run-vs-run comparison per stage with a noise band (docs/many-runs.md#statistics).

Pure: takes the database rows of the runs on each side (`RunRows`, from traces just analyzed or
from the results database) and returns a `Comparison`; it neither reads files nor prints.

Every metric is a ratio of sums over sampling units, so a group of runs pools its units:
`busy_s` = Σ busy / Σ 1 over image instances (the mean stage busy time of one image),
`mfu_trace` = Σ FLOPs / Σ (peak × busy), `step_busy_s` = mean GPU busy time of a decode step, …
The noise band is a seeded percentile bootstrap of new/base: both sides are redrawn, each at
its own size, from the units of both sides scaled to their side's level (`_band`), and the
metric recomputed. A change is *improved* or
*regressed* only when the band excludes 0 AND the change is at least `min_effect_pct`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from llm_perf_opt.batch.resultsdb import RunRows, frame_of

Verdict = Literal["improved", "regressed", "within_noise", "missing"]
# (stage, metric, delta %) of the time metrics over the `--fail-on-regression` threshold; the
# delta is None for a stage one side lacks (verdict `missing`, which always fails the gate).
Regressions = list[tuple[str, str, float | None]]
FloatArray = npt.NDArray[np.float64]

DEFAULT_MIN_EFFECT_PCT: Final = 3.0
CONFIDENCE: Final = 0.95
RESAMPLES: Final = 2000
SEED: Final = 0
METHOD: Final = (
    "percentile bootstrap of new/base, each metric a ratio of sums over image instances or "
    "decode steps; both sides redrawn from their pooled, leverage-adjusted relative residuals, "
    "widened by t/z for the residual degrees of freedom"
)
# Resampled unit draws held in memory at once (float64), bounding the bootstrap's memory.
BOOTSTRAP_CHUNK_DRAWS: Final = 4_000_000
# Two-sided 95 % quantiles of Student's t for 1-10 degrees of freedom, and the normal one: the
# band is widened by t/z because the spread itself is estimated from a handful of units.
T_975: Final = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
Z_975: Final = 1.959964
# Smallest relative value a widened residual may take (a unit at 0.1 % of its side's level).
MIN_RELATIVE_UNIT: Final = 1e-3
# Time metrics `--fail-on-regression` looks at.
TIME_METRICS: Final = ("busy_s", "wall_s", "step_busy_s", "step_wall_s")
RUN_FACTS: Final = ("model", "mode", "gpu_name", "dtype")


@dataclass(frozen=True)
class Metric:
    """A metric as Σ numerator / Σ denominator over the units of one table."""

    name: str
    unit: Literal["instance", "decode_step", "engine_step"]
    numerator: pl.Expr
    denominator: pl.Expr
    lower_is_better: bool
    decode_only: bool = False


_ONE: Final = pl.lit(1.0)
METRICS: Final = (
    Metric("busy_s", "instance", pl.col("gpu_busy_s"), _ONE, lower_is_better=True),
    Metric("wall_s", "instance", pl.col("wall_s"), _ONE, lower_is_better=True),
    Metric("mfu_trace", "instance", pl.col("flops"),
           pl.col("gpu_busy_s") * pl.col("peak_flops"), lower_is_better=False),
    Metric("mfu_wall", "instance", pl.col("flops"),
           pl.col("wall_s") * pl.col("peak_flops"), lower_is_better=False),
    Metric("mbu_trace", "instance", pl.col("decode_bytes"),
           pl.col("gpu_busy_s") * pl.col("peak_bandwidth_Bps"), lower_is_better=False,
           decode_only=True),
    Metric("mbu_wall", "instance", pl.col("decode_bytes"),
           pl.col("wall_s") * pl.col("peak_bandwidth_Bps"), lower_is_better=False,
           decode_only=True),
    Metric("kernels_per_step", "instance", pl.col("n_kernels").cast(pl.Float64),
           pl.col("decode_steps").cast(pl.Float64), lower_is_better=True, decode_only=True),
    Metric("step_busy_s", "decode_step", pl.col("gpu_busy_s"), _ONE, lower_is_better=True,
           decode_only=True),
)  # fmt: skip
# Without decode_step ranges the step time is decode busy over the instance's step count.
STEP_BUSY_BY_INSTANCE: Final = Metric(
    "step_busy_s",
    "instance",
    pl.col("gpu_busy_s"),
    pl.col("decode_steps").cast(pl.Float64),
    lower_is_better=True,
    decode_only=True,
)


# A serving engine's phases, compared step by step (`engine_steps` rows of one phase): the mean
# step's time, MFU and the tokens per second of wall time.
PHASE_PREFIX: Final = "engine:"
PHASE_METRICS: Final = (
    Metric("step_busy_s", "engine_step", pl.col("gpu_busy_s"), _ONE, lower_is_better=True),
    Metric("step_wall_s", "engine_step", pl.col("wall_s"), _ONE, lower_is_better=True),
    Metric("mfu_trace", "engine_step", pl.col("flops"),
           pl.col("gpu_busy_s") * pl.col("peak_flops"), lower_is_better=False),
    Metric("mfu_wall", "engine_step", pl.col("flops"),
           pl.col("wall_s") * pl.col("peak_flops"), lower_is_better=False),
    Metric("tokens_per_s", "engine_step",
           (pl.col("ctx_tokens") + pl.col("gen_tokens")).cast(pl.Float64), pl.col("wall_s"),
           lower_is_better=False),
)  # fmt: skip


@dataclass(frozen=True)
class MetricDelta:
    """One metric of one stage: both sides, the change and its noise band, the verdict. A
    stage only one side has is one `busy_s` row with verdict `missing`: the other side's value,
    the change and the band are None."""

    base: float | None
    new: float | None
    delta_pct: float | None
    ci_low_pct: float | None
    ci_high_pct: float | None
    verdict: Verdict
    n_base: int
    n_new: int
    unit: str
    lower_is_better: bool


@dataclass(frozen=True)
class RunInfo:
    """What identifies a compared run in the output."""

    run_id: str
    trace_name: str
    gpu_name: str | None
    model: str | None
    mode: str | None
    dtype: str | None
    experts_implementation: str | None
    attn_implementation: str | None


@dataclass(frozen=True)
class Comparison:
    """Per stage (and engine phase, `PHASE_PREFIX` + phase), per metric deltas, the runs of each
    side and what does not match."""

    base: tuple[RunInfo, ...]
    new: tuple[RunInfo, ...]
    stages: Mapping[str, Mapping[str, MetricDelta]]
    flags: tuple[str, ...]
    min_effect_pct: float
    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES
    seed: int = SEED
    method: str = METHOD


def _run_info(rows: RunRows) -> RunInfo:
    r = rows.run
    return RunInfo(
        run_id=str(r["run_id"]),
        trace_name=str(r["trace_name"]),
        gpu_name=r.get("gpu_name"),
        model=r.get("model"),
        mode=r.get("mode"),
        dtype=r.get("dtype"),
        experts_implementation=r.get("experts_implementation"),
        attn_implementation=r.get("attn_implementation"),
    )


def _units(side: Sequence[RunRows], table: str) -> pl.DataFrame:
    """The side's rows of `instances` or `decode_steps`, with each run's peaks joined."""
    frame = pl.concat([r.frame(table) for r in side])
    peaks = frame_of("runs", [r.run for r in side]).select(
        "run_id", "peak_flops", "peak_bandwidth_Bps"
    )
    return frame.join(peaks, on="run_id", how="left")


def _draws(
    a: FloatArray, b: FloatArray, n: int, rng: np.random.Generator, n_draws: int
) -> FloatArray:
    """`n_draws` bootstrap values of Σa/Σb over `n` units drawn with replacement from (a, b)."""
    per_chunk = max(1, BOOTSTRAP_CHUNK_DRAWS // max(n, 1))
    out = np.empty(n_draws)
    for start in range(0, n_draws, per_chunk):
        stop = min(n_draws, start + per_chunk)
        idx = rng.integers(0, len(a), size=(stop - start, n))
        out[start:stop] = a[idx].sum(axis=1) / b[idx].sum(axis=1)
    return out


def _residuals(a: FloatArray, b: FloatArray) -> FloatArray:
    """Each unit's numerator relative to its side's level, spread widened by 1/sqrt(1 - 1/n)
    (leverage-adjusted residuals: a side's level is fitted to its own n units, so the raw
    residuals understate the spread), kept above `MIN_RELATIVE_UNIT` so that no redrawn level
    turns negative. A side of one unit has no residual to give."""
    n = len(a)
    if n < 2:
        return np.empty(0)
    level = a.sum() / b.sum()
    per_unit = a / (b * level)
    widened = np.maximum(1 + (per_unit - 1) / np.sqrt(1 - 1 / n), MIN_RELATIVE_UNIT)
    return np.asarray(widened * b, dtype=np.float64)


def small_sample_widening(df: int) -> float:
    """t(0.975, df) / z(0.975): 6.5 for one degree of freedom, 1.4 for four, → 1 for many
    (beyond the table the Cornish-Fisher expansion of t, within 0.1 % there)."""
    if df < 1:
        return 1.0
    if df <= len(T_975):
        return T_975[df - 1] / Z_975
    z = Z_975
    return 1 + (z**2 + 1) / (4 * df) + (5 * z**4 + 16 * z**2 + 3) / (96 * df**2)


def _band(
    sides: Sequence[tuple[FloatArray, FloatArray]], rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile band of new/base from the pooled relative residuals of both sides.

    Each side is redrawn (at its own size) from the residuals of both sides and rescaled by
    its own level. Pooling lets a side of one or two images borrow the spread seen on the
    other; it assumes both sides scatter alike relative to their level (the same workload with
    one setting changed). The band is then widened, in log ratio, by t/z for the residual
    degrees of freedom. With one unit on each side there is no spread: the band is 0.
    """
    pooled_a = np.concatenate([_residuals(a, b) for a, b in sides])
    if len(pooled_a) == 0:
        return 1.0, 1.0
    pooled_b = np.concatenate([b for a, b in sides if len(a) >= 2])
    (base_a, _), (new_a, _) = sides
    base = _draws(pooled_a, pooled_b, len(base_a), rng, RESAMPLES)
    new = _draws(pooled_a, pooled_b, len(new_a), rng, RESAMPLES)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(new / base, [tail, 100 - tail])
    # residual degrees of freedom: pooled units less one fitted level per contributing side
    widen = small_sample_widening(len(pooled_a) - sum(len(a) >= 2 for a, _ in sides))
    return float(low**widen), float(high**widen)


def verdict_of(delta_pct: float, low: float, high: float, *, lower_is_better: bool,
               min_effect_pct: float) -> Verdict:  # fmt: skip
    """Improved/regressed only outside the noise band AND at least the practical threshold."""
    outside = low > 0 or high < 0
    if not outside or abs(delta_pct) < min_effect_pct:
        return "within_noise"
    better = delta_pct < 0 if lower_is_better else delta_pct > 0
    return "improved" if better else "regressed"


def _delta(
    metric: Metric,
    base: pl.DataFrame,
    new: pl.DataFrame,
    rng: np.random.Generator,
    min_effect_pct: float,
) -> MetricDelta | None:
    """One metric over the units of each side; None when a side cannot compute it."""
    sides = []
    for frame in (base, new):
        ab = frame.select(a=metric.numerator, b=metric.denominator).drop_nulls()
        if ab.height != frame.height or ab.is_empty() or (ab["b"] <= 0).any():
            return None
        sides.append((ab["a"].to_numpy().astype(float), ab["b"].to_numpy().astype(float)))
    (ba, bb), (na, nb) = sides
    base_value, new_value = float(ba.sum() / bb.sum()), float(na.sum() / nb.sum())
    if base_value == 0 or new_value == 0:
        return None
    low, high = _band(sides, rng)
    ratio = new_value / base_value
    delta_pct = 100 * (ratio - 1)
    low_pct, high_pct = 100 * (ratio * low - 1), 100 * (ratio * high - 1)
    return MetricDelta(
        base=base_value,
        new=new_value,
        delta_pct=delta_pct,
        ci_low_pct=low_pct,
        ci_high_pct=high_pct,
        verdict=verdict_of(
            delta_pct,
            low_pct,
            high_pct,
            lower_is_better=metric.lower_is_better,
            min_effect_pct=min_effect_pct,
        ),
        n_base=len(ba),
        n_new=len(na),
        unit=metric.unit,
        lower_is_better=metric.lower_is_better,
    )


def _flags(base: Sequence[RunInfo], new: Sequence[RunInfo]) -> list[str]:
    """Differences that make the comparison apples to oranges (allowed, but said)."""
    flags = []
    for fact in RUN_FACTS:
        b = sorted({str(getattr(r, fact)) for r in base})
        n = sorted({str(getattr(r, fact)) for r in new})
        if b != n or len(b) > 1:
            flags.append(f"{fact} differs: base {', '.join(b)}; new {', '.join(n)}")
    shared = {r.run_id for r in base} & {r.run_id for r in new}
    if shared:
        flags.append(f"the same run is on both sides: {', '.join(sorted(shared))}")
    return flags


def unique_runs(side: Sequence[RunRows], what: str) -> tuple[list[RunRows], str | None]:
    """The side's runs, each once (by run id: the same trace bytes analyzed with the same
    options, under any path), and a flag naming the runs given more than once."""
    seen: dict[str, RunRows] = {}
    repeated: dict[str, int] = {}
    for rows in side:
        if rows.run_id in seen:
            repeated[rows.run_id] = repeated.get(rows.run_id, 1) + 1
        else:
            seen[rows.run_id] = rows
    if not repeated:
        return list(seen.values()), None
    named = ", ".join(
        f"{seen[rid].run['trace_name']} ({rid[:8]}) {n}×" for rid, n in repeated.items()
    )
    return list(seen.values()), f"{what}: the same run given several times, counted once: {named}"


def _missing(stage: str, frame: pl.DataFrame, on_base: bool) -> MetricDelta:
    """The `missing` row of a stage only one side (base when `on_base`) has."""
    value = float(frame["gpu_busy_s"].sum()) / max(frame.height, 1)
    return MetricDelta(
        base=value if on_base else None,
        new=None if on_base else value,
        delta_pct=None,
        ci_low_pct=None,
        ci_high_pct=None,
        verdict="missing",
        n_base=frame.height if on_base else 0,
        n_new=0 if on_base else frame.height,
        unit="instance",
        lower_is_better=True,
    )


def compare_runs(
    base: Sequence[RunRows],
    new: Sequence[RunRows],
    *,
    min_effect_pct: float = DEFAULT_MIN_EFFECT_PCT,
    seed: int = SEED,
) -> Comparison:
    """Compare the stages both sides have, metric by metric (see the module docstring); a
    stage one side lacks is a `missing` row. Each run counts once per side (`unique_runs`)."""
    if not base or not new:
        raise ValueError("each side needs at least one run")
    base, base_flag = unique_runs(base, "base")
    new, new_flag = unique_runs(new, "new")
    rng = np.random.default_rng(seed)
    instances = _units(base, "instances"), _units(new, "instances")
    steps = _units(base, "decode_steps"), _units(new, "decode_steps")
    has_steps = all(not s.is_empty() for s in steps)
    names = [s for s in instances[0]["stage"].unique(maintain_order=True).to_list()
             if s in set(instances[1]["stage"].to_list())]  # fmt: skip
    stages: dict[str, dict[str, MetricDelta]] = {}
    for stage in names:
        per_stage = tuple(f.filter(pl.col("stage") == stage) for f in instances)
        deltas: dict[str, MetricDelta] = {}
        for metric in METRICS:
            if metric.decode_only and stage != "decode":
                continue
            if metric.unit == "decode_step":
                pick, units = (metric, steps) if has_steps else (STEP_BUSY_BY_INSTANCE, per_stage)
            else:
                pick, units = metric, per_stage
            delta = _delta(pick, units[0], units[1], rng, min_effect_pct)
            if delta is not None:
                deltas[metric.name] = delta
        stages[stage] = deltas
    for on_base, (mine, other) in ((True, instances), (False, instances[::-1])):
        lacking = set(other["stage"].to_list())
        for stage in mine["stage"].unique(maintain_order=True).to_list():
            if stage not in lacking:
                frame = mine.filter(pl.col("stage") == stage)
                stages[stage] = {"busy_s": _missing(stage, frame, on_base)}
    stages |= _phases(_units(base, "engine_steps"), _units(new, "engine_steps"), rng,
                      min_effect_pct)  # fmt: skip
    base_info = tuple(_run_info(r) for r in base)
    new_info = tuple(_run_info(r) for r in new)
    return Comparison(
        base=base_info,
        new=new_info,
        stages=stages,
        flags=(*(f for f in (base_flag, new_flag) if f), *_flags(base_info, new_info)),
        min_effect_pct=min_effect_pct,
        seed=seed,
    )


def _phases(
    base: pl.DataFrame, new: pl.DataFrame, rng: np.random.Generator, min_effect_pct: float
) -> dict[str, dict[str, MetricDelta]]:
    """The engine phases both sides ran, metric by metric over their steps."""
    shared = [p for p in base["phase"].unique(maintain_order=True).to_list()
              if p in set(new["phase"].to_list())]  # fmt: skip
    out = {}
    for phase in shared:
        sides = tuple(f.filter(pl.col("phase") == phase) for f in (base, new))
        deltas = {
            m.name: d
            for m in PHASE_METRICS
            if (d := _delta(m, sides[0], sides[1], rng, min_effect_pct)) is not None
        }
        out[PHASE_PREFIX + phase] = deltas
    return out


def regressions(comparison: Comparison, threshold_pct: float) -> Regressions:
    """(stage, metric, delta %) of every time metric that regressed beyond noise by more than
    `threshold_pct`, and every `missing` stage (the `--fail-on-regression` gate: a stage that
    vanished or appeared is never a pass)."""
    return [
        (stage, name, d.delta_pct)
        for stage, deltas in comparison.stages.items()
        for name, d in deltas.items()
        if d.verdict == "missing"
        or (
            name in TIME_METRICS
            and d.verdict == "regressed"
            and d.delta_pct is not None
            and d.delta_pct > threshold_pct
        )
    ]
