"""The report as CSV (`--format csv`) and the `--ranges-out` file."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import IO, Final

import polars as pl

from llm_perf_opt.attribution import RANGES_OUT_COLUMNS
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.report.fields import CSV, union
from llm_perf_opt.report.levels import (
    CATEGORY,
    ENGINE_PHASE,
    ENGINE_STEP,
    INSTANCE,
    MODEL,
    RUN,
    STAGE,
    category_frame,
    engine_phase_frame,
    engine_step_frame,
    instance_frame,
    model_frame,
    run_frame,
    stage_frame,
)

_LEVEL_COLUMNS: Final = union(INSTANCE.names(CSV), STAGE.names(CSV), MODEL.names(CSV))
# the category rows' own columns after the stages'
_STAGE_COLUMNS: Final = (
    *_LEVEL_COLUMNS,
    *(name for name in CATEGORY.names(CSV) if name not in _LEVEL_COLUMNS),
)
# One row per instance, stage and the model, then per engine phase and step, each with the run's
# columns; the engine levels' own columns follow the stages'.
CSV_COLUMNS: Final = (
    "level",
    *_STAGE_COLUMNS,
    *(
        name
        for name in union(ENGINE_PHASE.names(CSV), ENGINE_STEP.names(CSV))
        if name not in _STAGE_COLUMNS
    ),
    *RUN.names(CSV),
)


def to_csv(report: MfuReport) -> str:
    """One row per stage instance, per stage (`level=stage`), per category of a stage's kernel
    time (`level=category`) and for the model (`level=model`): each stage's instances, the
    stage and its categories, then the model; then one row per engine phase
    (`level=engine_phase`) and per engine step (`level=engine_step`) when the trace has them."""
    levels = [
        frame.select(level.names(CSV)).with_columns(level=pl.lit(level.name))
        for level, frame in (
            (INSTANCE, instance_frame(report)),
            (STAGE, stage_frame(report)),
            (CATEGORY, category_frame(report)),
            (MODEL, model_frame(report)),
        )
    ]
    instances, stages, categories, model = levels
    parts = [
        part.filter(pl.col("stage") == name)
        for name in report.stages
        for part in (instances, stages, categories)
    ]
    run = run_frame(report).select(RUN.names(CSV)).row(0, named=True)
    engine = [
        frame.select(level.names(CSV)).with_columns(level=pl.lit(level.name))
        for level, frame in (
            (ENGINE_PHASE, engine_phase_frame(report)),
            (ENGINE_STEP, engine_step_frame(report)),
        )
    ]
    rows = pl.concat([*parts, model, *engine], how="diagonal_relaxed").to_dicts()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(row | run for row in rows)
    return buf.getvalue()


def write_ranges_csv(ranges: pl.DataFrame, target: str | Path | IO[bytes]) -> None:
    """The `--ranges-out` file (a path or a binary handle): exactly `RANGES_OUT_COLUMNS`, in
    order, one row per range."""
    ranges.select(RANGES_OUT_COLUMNS).write_csv(
        target if not isinstance(target, str | Path) else Path(target)
    )
