"""The report as CSV (`--format csv`) and the `--ranges-out` file."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import IO, Final

import polars as pl

from llm_perf_opt.attribution import RANGES_OUT_COLUMNS
from llm_perf_opt.mfu import MfuReport
from llm_perf_opt.report.fields import CSV, union
from llm_perf_opt.report.levels import (
    INSTANCE,
    MODEL,
    RUN,
    STAGE,
    instance_frame,
    model_frame,
    run_frame,
    stage_frame,
)

# One row per instance, stage and the model, each with the run's columns.
CSV_COLUMNS: Final = (
    "level",
    *union(INSTANCE.names(CSV), STAGE.names(CSV), MODEL.names(CSV)),
    *RUN.names(CSV),
)


def to_csv(report: MfuReport) -> str:
    """One row per stage instance, per stage (`level=stage`) and for the model (`level=model`):
    each stage's instances, then the stage; the model last."""
    levels = [
        frame.select(level.names(CSV)).with_columns(level=pl.lit(level.name))
        for level, frame in (
            (INSTANCE, instance_frame(report)),
            (STAGE, stage_frame(report)),
            (MODEL, model_frame(report)),
        )
    ]
    instances, stages, model = levels
    parts = [
        part.filter(pl.col("stage") == name)
        for name in report.stages
        for part in (instances, stages)
    ]
    run = run_frame(report).select(RUN.names(CSV)).row(0, named=True)
    rows = pl.concat([*parts, model], how="diagonal").to_dicts()
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
