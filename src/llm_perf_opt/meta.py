"""Run metadata (`llm_perf_opt.run_meta/1`, docs/run-metadata.md) on the analysis side.

The runner validates the full JSON Schema before emitting; here only the fields the analysis uses
are checked, by hand (no torch, no jsonschema dependency), so that a hand-edited or foreign
`--meta` file fails with a message naming the key instead of a KeyError deep in the MFU code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.userfiles import parse_json, read_text

SCHEMA_ID = "llm_perf_opt.run_meta/1"
STATIC_COMPUTE_SCHEMA = "llm_perf_opt.static_compute/1"
NVTX_DOMAIN = "llm_perf_opt"
FAMILIES = ("deepseek-ocr", "deepseek-ocr2")
CTX_MODES = ("auto", "max", "fixed")
STAGES = ("vision", "prefill", "decode")

T = TypeVar("T")


class MetaError(ConfigError):
    """The run metadata is malformed; the message names the key and the source."""


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


class _Reader:
    """Typed access to nested JSON keys with errors that name the dotted key path."""

    def __init__(self, source: str, what: str = "run metadata") -> None:
        self.source = source
        self.what = what

    def fail(self, key: str, problem: str) -> MetaError:
        return MetaError(f"{self.what} ({self.source}): `{key}` {problem}")

    def get(self, obj: Mapping[str, Any], key: str, path: str, kind: type[T]) -> T:
        if key not in obj:
            raise self.fail(path, "is missing")
        return self.check(obj[key], path, kind)

    def opt(self, obj: Mapping[str, Any], key: str, path: str, kind: type[T]) -> T | None:
        value = obj.get(key)
        return None if value is None else self.check(value, path, kind)

    def check(self, value: Any, path: str, kind: type[T]) -> T:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]
        if not ok:
            raise self.fail(path, f"must be {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}")
        return value  # type: ignore[no-any-return]

    def nonneg_int(self, obj: Mapping[str, Any], key: str, path: str) -> int:
        value = self.get(obj, key, path, int)
        if value < 0:
            raise self.fail(path, f"must be ≥ 0, got {value}")
        return value

    def int_list(self, value: Any, path: str) -> tuple[int, ...]:
        items = self.check(value, path, list)
        return tuple(self.check(v, f"{path}[{i}]", int) for i, v in enumerate(items))

    def float_list(self, value: Any, path: str) -> tuple[float, ...]:
        items = self.check(value, path, list)
        return tuple(self.check(v, f"{path}[{i}]", float) for i, v in enumerate(items))


_KIND_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    dict: "an object",
    list: "an array",
}


def _image(r: _Reader, obj: Any, i: int) -> ImageMeta:
    """Validate `images[i]`, including the decode-step bookkeeping the ctx modes rely on."""
    p = f"images[{i}]"
    img = r.check(obj, p, dict)
    index = r.nonneg_int(img, "index", f"{p}.index")
    grid_raw = img.get("crop_grid")
    grid = None
    if grid_raw is not None:
        pair = r.int_list(grid_raw, f"{p}.crop_grid")
        if len(pair) != 2:
            raise r.fail(f"{p}.crop_grid", f"must be [w, h] or null, got {grid_raw!r}")
        grid = (pair[0], pair[1])
    prefill_len = r.get(img, "prefill_len", f"{p}.prefill_len", int)
    if prefill_len <= 0:
        raise r.fail(f"{p}.prefill_len", f"must be > 0, got {prefill_len}")
    steps = r.nonneg_int(img, "decode_steps", f"{p}.decode_steps")
    ctx = r.int_list(img.get("decode_context_lens", []), f"{p}.decode_context_lens")
    if "decode_context_lens" in img and len(ctx) != steps:
        raise r.fail(
            f"{p}.decode_context_lens", f"has {len(ctx)} entries but decode_steps is {steps}"
        )
    wall_obj = r.opt(img, "wall_s", f"{p}.wall_s", dict) or {}
    wall = {
        stage: r.check(wall_obj[stage], f"{p}.wall_s.{stage}", float)
        for stage in STAGES
        if wall_obj.get(stage) is not None
    }
    for stage, seconds in wall.items():
        if seconds < 0:
            raise r.fail(f"{p}.wall_s.{stage}", f"must be ≥ 0, got {seconds}")
    return ImageMeta(
        index=index,
        mode=r.get(img, "mode", f"{p}.mode", str),
        crop_grid=grid,
        n_crops=r.opt(img, "n_crops", f"{p}.n_crops", int) or 0,
        vision_tokens=r.opt(img, "vision_tokens", f"{p}.vision_tokens", int),
        image_positions=r.opt(img, "image_positions", f"{p}.image_positions", int),
        prefill_len=prefill_len,
        decode_steps=steps,
        decode_context_lens=ctx,
        wall_s=wall,
        decode_step_wall_s=r.float_list(
            img.get("decode_step_wall_s", []), f"{p}.decode_step_wall_s"
        ),
    )


def parse_meta(data: Any, source: str) -> RunMeta:
    """Validate decoded run-metadata JSON.

    Args:
        data: the decoded JSON value.
        source: where it came from (shown in errors), e.g. `trace mark` or a file path.

    Raises:
        MetaError: a used key is missing, mistyped or inconsistent.
    """
    r = _Reader(source)
    top = r.check(data, "(top level)", dict)
    schema = r.get(top, "schema", "schema", str)
    if schema != SCHEMA_ID:
        raise r.fail("schema", f"is {schema!r}; this analyzer reads {SCHEMA_ID!r}")
    model = r.get(top, "model", "model", dict)
    family = r.get(model, "family", "model.family", str)
    if family not in FAMILIES:
        raise r.fail("model.family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    context = r.opt(top, "context", "context", dict) or {}
    ctx_mode = r.opt(context, "context_len_mode", "context.context_len_mode", str) or "auto"
    if ctx_mode not in CTX_MODES:
        raise r.fail(
            "context.context_len_mode", f"must be one of {', '.join(CTX_MODES)}, got {ctx_mode!r}"
        )
    warmup = r.opt(top, "warmup", "warmup", dict) or {}
    device = r.opt(top, "device", "device", dict) or {}
    images = tuple(_image(r, obj, i) for i, obj in enumerate(r.get(top, "images", "images", list)))
    indices = [img.index for img in images]
    if len(set(indices)) != len(indices):
        raise r.fail("images", f"has repeated `index` values {indices}")
    return RunMeta(
        source=source,
        run_id=r.opt(top, "run_id", "run_id", str),
        nvtx_domain=r.opt(top, "nvtx_domain", "nvtx_domain", str) or NVTX_DOMAIN,
        model_name=r.opt(model, "name", "model.name", str) or family,
        family=family,
        tiny=r.opt(model, "tiny", "model.tiny", bool) or False,
        model_config=r.opt(model, "config", "model.config", dict),
        dtype=r.get(top, "dtype", "dtype", str),
        device_name=r.opt(device, "name", "device.name", str),
        mode=r.opt(top, "mode", "mode", str) or (images[0].mode if images else "base"),
        context_len_mode=ctx_mode,
        context_len_fixed=r.opt(context, "context_len_fixed", "context.context_len_fixed", int),
        warmup_rounds=r.opt(warmup, "rounds", "warmup.rounds", int) or 0,
        max_new_tokens=r.get(top, "max_new_tokens", "max_new_tokens", int),
        images=images,
        raw=top,
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
            if isinstance(text, str) and SCHEMA_ID in text and text.lstrip().startswith("{"):
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
    what = "static compute report"
    data = _decode(read_text(p, "--static-compute"), str(p), what)
    r = _Reader(str(p), what)
    top = r.check(data, "(top level)", dict)
    schema = r.get(top, "schema", "schema", str)
    if schema != STATIC_COMPUTE_SCHEMA:
        raise r.fail("schema", f"is {schema!r}; expected {STATIC_COMPUTE_SCHEMA!r}")
    for name, stage in r.get(top, "stages", "stages", dict).items():
        entry = r.check(stage, f"stages.{name}", dict)
        r.get(entry, "analytic_flops_full_square", f"stages.{name}.analytic_flops_full_square", int)
    return top
