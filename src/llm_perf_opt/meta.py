"""Run metadata (`llm_perf_opt.run_meta/1`, docs/run-metadata.md) on the analysis side.

A record is checked against the shipped JSON Schema (`schemas.check_run_meta`, the runner's
check too) before any field is read, so a hand-edited or foreign `--meta` file fails with a
message naming the key instead of a KeyError deep in the MFU code; `RunMeta` is then the subset
the analysis uses, typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from llm_perf_opt.errors import ConfigError, MetaError
from llm_perf_opt.schemas import check_run_meta, check_static_compute
from llm_perf_opt.userfiles import parse_json, read_text
from llm_perf_opt.vocab import RUN_META_SCHEMA_ID


@dataclass(frozen=True)
class ImageMeta:
    """One measured image: the facts its stages' FLOPs and wall-clock MFU need."""

    index: int
    mode: str
    crop_grid: tuple[int, int] | None
    n_crops: int
    vision_tokens: int | None
    image_positions: int | None
    prefill_len: int
    decode_steps: int
    decode_context_lens: tuple[int, ...]
    wall_s: Mapping[str, float]
    decode_step_wall_s: tuple[float, ...]


@dataclass(frozen=True)
class RunMeta:
    """The validated subset of the run metadata the analysis uses, plus the raw JSON."""

    source: str
    run_id: str | None
    nvtx_domain: str
    model_name: str
    family: str
    tiny: bool
    model_config: Mapping[str, Any] | None
    dtype: str
    device_name: str | None
    mode: str
    context_len_mode: str
    context_len_fixed: int | None
    warmup_rounds: int
    max_new_tokens: int
    images: tuple[ImageMeta, ...]
    raw: Mapping[str, Any]


def _image(img: Mapping[str, Any]) -> ImageMeta:
    """`images[i]` of validated metadata."""
    grid = img["crop_grid"]
    return ImageMeta(
        index=int(img["index"]),
        mode=img["mode"],
        crop_grid=None if grid is None else (int(grid[0]), int(grid[1])),
        n_crops=int(img["n_crops"]),
        vision_tokens=int(img["vision_tokens"]),
        image_positions=int(img["image_positions"]),
        prefill_len=int(img["prefill_len"]),
        decode_steps=int(img["decode_steps"]),
        decode_context_lens=tuple(int(c) for c in img["decode_context_lens"]),
        wall_s={stage: float(seconds) for stage, seconds in img["wall_s"].items()},
        decode_step_wall_s=tuple(float(t) for t in img["decode_step_wall_s"]),
    )


def parse_meta(data: Any, source: str) -> RunMeta:
    """Validate decoded run-metadata JSON and keep what the analysis uses.

    Args:
        data: the decoded JSON value.
        source: where it came from (shown in errors), e.g. `trace mark` or a file path.

    Raises:
        MetaError: it does not match the schema (the message names each failing key).
    """
    check_run_meta(data, source)
    model, context = data["model"], data["context"]
    fixed = context["context_len_fixed"]
    return RunMeta(
        source=source,
        run_id=data["run_id"],
        nvtx_domain=data["nvtx_domain"],
        model_name=model["name"],
        family=model["family"],
        tiny=model["tiny"],
        model_config=model["config"],
        dtype=data["dtype"],
        device_name=data["device"]["name"],
        mode=data["mode"],
        context_len_mode=context["context_len_mode"],
        context_len_fixed=None if fixed is None else int(fixed),
        warmup_rounds=int(data["warmup"]["rounds"]),
        max_new_tokens=int(data["max_new_tokens"]),
        images=tuple(_image(img) for img in data["images"]),
        raw=data,
    )


def _decode(text: str, source: str, what: str = "run metadata") -> Any:
    try:
        return parse_json(text, f"{what} ({source})")
    except ConfigError as exc:
        raise MetaError(str(exc)) from None


def load_meta_file(path: str | Path) -> RunMeta:
    """Read and validate a `run.meta.json` given with `--meta`.

    Raises:
        MissingInputError: the file does not exist.
        MetaError: it is not valid metadata.
    """
    p = Path(path)
    return parse_meta(_decode(read_text(p, "--meta"), str(p)), str(p))


def meta_from_marks(marks: pl.DataFrame) -> RunMeta | None:
    """The run metadata from the trace's NVTX marks (the last one with our schema id), if any.

    Args:
        marks: `Trace.nvtx_marks()` (`name`, `domain`, `json_text` among its columns).

    Raises:
        MetaError: a mark claims our schema but is malformed.
    """
    if marks.is_empty():
        return None
    if "start_ns" in marks.columns:
        marks = marks.sort("start_ns")
    found: str | None = None
    columns = [c for c in ("name", "json_text") if c in marks.columns]
    for row in marks.select(columns).iter_rows():
        for text in row:
            if (
                isinstance(text, str)
                and RUN_META_SCHEMA_ID in text
                and text.lstrip().startswith("{")
            ):
                found = text
    if found is None:
        return None
    return parse_meta(_decode(found, "trace mark"), "trace mark")


def load_static_compute(path: str | Path) -> dict[str, Any]:
    """Read the runner's `static_compute.json` (fvcore per stage next to the analytic numbers).

    Raises:
        MissingInputError: the file does not exist.
        MetaError: it is not JSON or not a static compute report (`schema`, `stages`).
    """
    p = Path(path)
    data = _decode(read_text(p, "--static-compute"), str(p), "static compute report")
    check_static_compute(data, str(p))
    report: dict[str, Any] = data
    return report
