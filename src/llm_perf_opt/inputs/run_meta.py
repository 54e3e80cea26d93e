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
from typing import TYPE_CHECKING, Any

from llm_perf_opt.errors import ConfigError, MetaError
from llm_perf_opt.inputs.user_files import parse_json, read_text
from llm_perf_opt.schemas import check_run_meta, check_static_compute
from llm_perf_opt.vocab import RUN_META_SCHEMA_ID, VLLM_STEP_NAME

if TYPE_CHECKING:  # the runner validates its metadata here and need not have polars
    import polars as pl


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
    """The validated subset of the run metadata the analysis uses, plus the raw JSON.

    `mode` is None for a `--serve --decoder-config` run (text only); `serve` is the schedule of a
    `--serve` run (whose `images` is empty: pages are not run stage by stage).
    """

    source: str
    run_id: str | None
    nvtx_domain: str
    model_name: str
    family: str
    tiny: bool
    model_config: Mapping[str, Any] | None
    dtype: str
    device_name: str | None
    mode: str | None
    context_len_mode: str
    context_len_fixed: int | None
    warmup_rounds: int
    max_new_tokens: int
    images: tuple[ImageMeta, ...]
    raw: Mapping[str, Any]
    serve: ServeMeta | None = None


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
    check_serve(data, source)
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
        serve=serve_meta(data),
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


# --- the serving loop's schedule (`serve`, written by `run_dsocr.py --serve`) --------------------


@dataclass(frozen=True)
class ServeEntry:
    """One request's share of one engine step (see docs/run-metadata.md, `serve`)."""

    request: int
    phase: str
    query_len: int
    context_len: int
    encoder_images: int


@dataclass(frozen=True)
class ServeStep:
    """One engine step: its range name, synchronized wall seconds and scheduled requests."""

    index: int
    name: str
    wall_s: float
    entries: tuple[ServeEntry, ...]


@dataclass(frozen=True)
class ServeRequest:
    """One request of the serving loop."""

    id: int
    prompt_len: int
    image_index: int | None
    arrival_step: int
    max_new_tokens: int
    generated_tokens: int


@dataclass(frozen=True)
class ServeMeta:
    """The `serve` block: the scheduler's limits, the requests and every step's true
    per-request (query_len, context_len)."""

    step_name_format: str
    token_budget: int
    max_running: int | None
    requests: tuple[ServeRequest, ...]
    steps: tuple[ServeStep, ...]


def serve_meta(data: Mapping[str, Any]) -> ServeMeta | None:
    """The typed `serve` block of schema-valid metadata, or None for a stage-by-stage run."""
    serve = data.get("serve")
    if serve is None:
        return None
    return ServeMeta(
        step_name_format=serve["step_name_format"],
        token_budget=int(serve["token_budget"]),
        max_running=None if serve["max_running"] is None else int(serve["max_running"]),
        requests=tuple(
            ServeRequest(
                id=int(r["id"]),
                prompt_len=int(r["prompt_len"]),
                image_index=None if r["image_index"] is None else int(r["image_index"]),
                arrival_step=int(r["arrival_step"]),
                max_new_tokens=int(r["max_new_tokens"]),
                generated_tokens=int(r["generated_tokens"]),
            )
            for r in serve["requests"]
        ),
        steps=tuple(
            ServeStep(
                index=int(s["index"]),
                name=s["name"],
                wall_s=float(s["wall_s"]),
                entries=tuple(
                    ServeEntry(
                        request=int(e["request"]),
                        phase=e["phase"],
                        query_len=int(e["query_len"]),
                        context_len=int(e["context_len"]),
                        encoder_images=int(e["encoder_images"]),
                    )
                    for e in s["entries"]
                ),
            )
            for s in serve["steps"]
        ),
    )


def serve_step_name(entries: tuple[ServeEntry, ...]) -> str:
    """The vLLM-format name (`vocab.VLLM_STEP_NAME`) a step with these entries carries."""
    ctx = [e.query_len for e in entries if e.phase == "context"]
    gen = [e.query_len for e in entries if e.phase == "generation"]
    return VLLM_STEP_NAME.format(
        ctx_reqs=len(ctx), ctx_tokens=sum(ctx), gen_reqs=len(gen), gen_tokens=sum(gen)
    )


def check_serve(data: Mapping[str, Any], source: str = "run metadata") -> None:
    """The schedule's consistency beyond the schema: what makes (query_len, context_len) truth.

    Steps are numbered 0, 1, …; each name matches its entries; a step runs at most token_budget
    tokens, each request at most once, after it arrived, and at most max_running requests are
    in flight; a request's context chunks cover its prompt once, in order (context_len the
    tokens before), its generation steps follow at context_len = prompt_len, prompt_len + 1, …;
    its vision encoder runs once, in its first chunk, if it has an image; generated_tokens =
    1 (the step finishing the prompt) + its generation steps ≤ max_new_tokens.

    Raises:
        MetaError: the first inconsistency found, naming the step or request.
    """
    serve = serve_meta(data)
    if serve is None:
        return
    where = f"{source}: serve"
    requests = {r.id: r for r in serve.requests}
    if len(requests) != len(serve.requests):
        raise MetaError(f"{where}.requests repeats a request id")
    seen: dict[int, list[tuple[int, ServeEntry]]] = {rid: [] for rid in requests}
    for i, step in enumerate(serve.steps):
        at = f"{where}.steps[{i}]"
        if step.index != i:
            raise MetaError(f"{at} has index {step.index}; steps must be numbered 0, 1, …")
        if step.name != serve_step_name(step.entries):
            raise MetaError(
                f"{at} is named {step.name!r} but its entries make "
                f"{serve_step_name(step.entries)!r}"
            )
        tokens = sum(e.query_len for e in step.entries)
        if tokens > serve.token_budget:
            raise MetaError(f"{at} runs {tokens} tokens, over the budget {serve.token_budget}")
        ids = [e.request for e in step.entries]
        if len(set(ids)) != len(ids) or not set(ids) <= set(requests):
            raise MetaError(f"{at} lists a request twice or one not in serve.requests")
        for entry in step.entries:
            if requests[entry.request].arrival_step > i:
                raise MetaError(f"{at} runs request {entry.request} before it arrives")
            seen[entry.request].append((i, entry))
    spans = []
    for rid, runs in seen.items():
        _check_request(requests[rid], [e for _, e in runs], f"{where} request {rid}")
        if runs:
            spans.append((runs[0][0], runs[-1][0]))
    if serve.max_running is not None:
        for i in range(len(serve.steps)):
            if sum(first <= i <= last for first, last in spans) > serve.max_running:
                raise MetaError(f"{where}.steps[{i}] has more than max_running requests in flight")


def _check_request(request: ServeRequest, runs: list[ServeEntry], where: str) -> None:
    context = [e for e in runs if e.phase == "context"]
    generation = [e for e in runs if e.phase == "generation"]
    if runs[: len(context)] != context:
        raise MetaError(f"{where} generates before its prompt is finished")
    done = 0
    for entry in context:
        if entry.context_len != done:
            raise MetaError(f"{where}: a chunk starts at {entry.context_len}, not at {done}")
        done += entry.query_len
    if done not in (0, request.prompt_len) or (done == 0 and generation):
        raise MetaError(f"{where}: its chunks cover {done} of {request.prompt_len} prompt tokens")
    for k, entry in enumerate(generation):
        if (entry.query_len, entry.context_len) != (1, request.prompt_len + k):
            raise MetaError(f"{where}: generation step {k} is not 1 token at {done + k}")
    images = [e.encoder_images for e in context]
    wanted = [1 if request.image_index is not None else 0] + [0] * (len(context) - 1)
    if context and images != wanted:
        raise MetaError(f"{where}: the vision encoder must run once, in the first chunk")
    produced = (1 if done == request.prompt_len else 0) + len(generation)
    if produced != request.generated_tokens or produced > request.max_new_tokens:
        raise MetaError(
            f"{where}: generated_tokens {request.generated_tokens} but its steps "
            f"produce {produced} (max_new_tokens {request.max_new_tokens})"
        )
