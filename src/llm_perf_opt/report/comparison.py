"""Render a `Comparison`: JSON (docs/many-runs.md), Markdown and a PNG, and the header and rows
that `mfu-compare`'s terminal table and the HTML page show.

Renderers only format; every number comes from `compare.compare_runs`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from llm_perf_opt.batch.deltas import (
    PHASE_PREFIX,
    Comparison,
    MetricDelta,
    Regressions,
    RunInfo,
)
from llm_perf_opt.report import format_pct, md_table

COMPARE_SCHEMA_ID: Final = "llm_perf_opt.mfu_compare/1"
# How each metric is shown to a person: scale and format (JSON keeps the raw SI values).
_SHOW: Final = {
    "busy_s": ("busy ms / image", 1e3, ",.3f"),
    "wall_s": ("wall ms / image", 1e3, ",.3f"),
    "mfu_trace": ("MFU trace", None, ""),
    "mfu_wall": ("MFU wall", None, ""),
    "mbu_trace": ("MBU trace", None, ""),
    "mbu_wall": ("MBU wall", None, ""),
    "kernels_per_step": ("kernels / step", 1.0, ",.1f"),
    "step_busy_s": ("step busy µs", 1e6, ",.1f"),
    "step_wall_s": ("step wall µs", 1e6, ",.1f"),
    "tokens_per_s": ("tokens / s", 1.0, ",.1f"),
}
HEAD: Final = ("stage", "metric", "base", "new", "Δ", "95% band", "n", "verdict")


def _delta_json(d: MetricDelta) -> dict[str, Any]:
    return {
        "base": d.base,
        "new": d.new,
        "delta_pct": d.delta_pct,
        "ci_low_pct": d.ci_low_pct,
        "ci_high_pct": d.ci_high_pct,
        "verdict": d.verdict,
        "n_base": d.n_base,
        "n_new": d.n_new,
        "samples": d.unit,
        "lower_is_better": d.lower_is_better,
    }


def to_json(c: Comparison, regressions: Regressions | None = None) -> dict[str, Any]:
    """The `--format json` document: `stages.<stage>.<metric>` = {base, new, delta_pct, …}."""
    return {
        "schema": COMPARE_SCHEMA_ID,
        "method": c.method,
        "confidence": c.confidence,
        "resamples": c.resamples,
        "seed": c.seed,
        "min_effect_pct": c.min_effect_pct,
        "base": [asdict(r) for r in c.base],
        "new": [asdict(r) for r in c.new],
        "flags": list(c.flags),
        "stages": {
            stage: {name: _delta_json(d) for name, d in deltas.items()}
            for stage, deltas in c.stages.items()
        },
        "regressions": [
            {"stage": s, "metric": m, "delta_pct": p} for s, m, p in (regressions or [])
        ],
    }


def to_json_text(c: Comparison, regressions: Regressions | None = None) -> str:
    return json.dumps(to_json(c, regressions), indent=2, allow_nan=False) + "\n"


def label(name: str) -> str:
    """A metric's name as a person reads it."""
    return _SHOW[name][0]


def shown(name: str, x: float | None) -> str:
    """A metric's value as a person reads it (ms, µs, %; – where a side has none)."""
    _, scale, spec = _SHOW[name]
    if x is None:
        return "–"
    return format_pct(x) if scale is None else format(x * scale, spec)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.1f}%"


def regression_line(stage: str, metric: str, pct: float | None) -> str:
    """One regression as a person reads it (a missing stage has no change to show)."""
    return f"{stage} missing on one side" if pct is None else f"{stage} {metric} {pct:+.1f}%"


def rows(c: Comparison) -> list[tuple[str, ...]]:
    return [
        (
            stage,
            _SHOW[name][0],
            shown(name, d.base),
            shown(name, d.new),
            _pct(d.delta_pct),
            "–" if d.ci_low_pct is None else f"[{_pct(d.ci_low_pct)}, {_pct(d.ci_high_pct)}]",
            f"{d.n_base}/{d.n_new} {'images' if d.unit == 'instance' else 'steps'}",
            d.verdict.replace("_", " "),
        )
        for stage, deltas in c.stages.items()
        for name, d in deltas.items()
    ]


def _side(runs: tuple[RunInfo, ...]) -> str:
    parts = [
        f"{r.trace_name} ({r.run_id[:8]}; {r.gpu_name or '?'}, {r.model or '?'} {r.mode or ''}, "
        f"experts {r.experts_implementation or '?'})"
        for r in runs
    ]
    return "; ".join(parts)


def header(c: Comparison) -> list[str]:
    return [
        f"Base: {_side(c.base)}",
        f"New: {_side(c.new)}",
        f"Noise band: {c.confidence:.0%} {c.method} ({c.resamples} resamples, seed {c.seed}); "
        f"a change counts when outside the band and ≥ {c.min_effect_pct:g}%",
    ]


def to_markdown(c: Comparison, regressions: Regressions) -> str:
    out = ["# MFU comparison", "", *(f"- {line}" for line in header(c)), ""]
    out += [md_table(HEAD, rows(c)), ""]
    if c.flags:
        out += ["## Flags", "", *(f"- {f}" for f in c.flags), ""]
    if regressions:
        out += [
            "## Regressions",
            "",
            *(f"- {regression_line(s, m, p)}" for s, m, p in regressions),
            "",
        ]
    return "\n".join(out)


# The text renderings of `--format`, each of the comparison and its regressions.
RENDERERS: Final = {"json": to_json_text, "md": to_markdown}


def _bar(d: MetricDelta | None, side: str) -> float:
    value = None if d is None else getattr(d, side)
    return 0.0 if value is None else float(value)


def write_png(c: Comparison, path: str | Path) -> Path:
    """Both sides per stage: busy and wall time per image and MFU (trace), each new bar
    labelled with its change (the stages only: engine phases are in the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in c.stages if not s.startswith(PHASE_PREFIX)]
    panels = [("busy_s", "GPU busy ms / image", 1e3), ("wall_s", "wall ms / image", 1e3),
              ("mfu_trace", "MFU trace %", 100.0)]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    width = 0.38
    for ax, (name, label, scale) in zip(axes, panels, strict=True):
        xs = range(len(stages))
        base = [_bar(c.stages[s].get(name), "base") * scale for s in stages]
        new = [_bar(c.stages[s].get(name), "new") * scale for s in stages]
        ax.bar([x - width / 2 for x in xs], base, width, label="base", color="#8a8a8a")
        ax.bar([x + width / 2 for x in xs], new, width, label="new", color="#2b6cb0")
        for x, s, n in zip(xs, stages, new, strict=True):
            d = c.stages[s].get(name)
            if d is not None and d.delta_pct is not None:
                ax.annotate(f"{d.delta_pct:+.0f}%", (x + width / 2, n), ha="center",
                            va="bottom", fontsize=8)  # fmt: skip
        ax.set_xticks(list(xs), stages)
        ax.set_title(label, fontsize=10)
        ax.set_yscale("log")  # decode is 100x below vision in both time and MFU
    axes[0].legend(fontsize=8)
    names = [", ".join(r.trace_name for r in side) for side in (c.base, c.new)]
    fig.suptitle(f"base: {names[0][:80]}   new: {names[1][:80]}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
