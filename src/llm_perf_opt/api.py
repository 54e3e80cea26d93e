"""The Python API for notebooks and scripts (docs/api.md): `analyze`, `compare` and `flops`.

A thin facade over the library, in the manner of HolisticTraceAnalysis's `TraceAnalysis`: one
call analyzes, and the object it returns holds every level of the report as a polars frame,
the report itself and its renderings. Nothing is computed here: `analyze` calls
`analysis.analyze_trace`, the frames are the report levels' own (`report.levels`), `compare`
is `compare.compare_runs` over the rows the results database would hold, `flops` is what
`mfu-flops` prints. `mfu-analyze` (one trace), `mfu-compare` and `mfu-flops` call these
functions.

`Analysis` declares each frame on one line, `name = Frame(build, doc)`, where `build` takes one
analyzed trace (`Run`) and returns its frame; the facade puts the `trace` column first, stacks
the traces and keeps a frame once built.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, overload

import polars as pl

from llm_perf_opt import analysis
from llm_perf_opt.analysis import AnalyzeOptions, Progress
from llm_perf_opt.batch import fanout, runs
from llm_perf_opt.batch.deltas import (
    DEFAULT_MIN_EFFECT_PCT,
    SEED,
    Regressions,
    compare_runs,
    regressions,
)
from llm_perf_opt.batch.deltas import Comparison as RunComparison
from llm_perf_opt.batch.resultsdb import (
    ResultsDb,
    RunRows,
    record_of,
    rows_from_report,
)
from llm_perf_opt.errors import AnalysisError, ConfigError, RunSpecError
from llm_perf_opt.flops.configs import ModelConfig, builtin_config, load_config_json
from llm_perf_opt.flops.estimate import estimate_run, parse_crops
from llm_perf_opt.flops.hf import HfModel
from llm_perf_opt.flops.hf_model import estimate_hf_run, parse_image_size, read_hf_config
from llm_perf_opt.inputs.stage_ranges import parse_stage_option
from llm_perf_opt.inputs.user_files import RunFiles
from llm_perf_opt.metrics.mfu import MfuReport
from llm_perf_opt.peaks.sources import parse_peak_source
from llm_perf_opt.report import levels, to_csv, to_json, to_json_text, to_markdown
from llm_perf_opt.report.comparison import to_json_text as comparison_json
from llm_perf_opt.report.comparison import to_markdown as comparison_markdown
from llm_perf_opt.trace import Trace
from llm_perf_opt.vocab import DEFAULT_VISION_MODE, FAMILIES, LmHeadPositions

TracePath = str | Path


@dataclass(frozen=True)
class Run:
    """One analyzed trace: its path as given, the options, what `analysis.analyze_trace`
    returned, and how many seconds that took."""

    trace: str
    options: AnalyzeOptions
    result: analysis.Analysis
    seconds: float

    @property
    def report(self) -> MfuReport:
        """The MFU report (only `require_mfu=False` can leave a trace without one)."""
        if self.result.report is None:
            raise AnalysisError(f"{self.trace}: MFU not computed ({self.result.skipped_reason})")
        return self.result.report

    def rows(self) -> RunRows:
        """The rows the results database stores for this run (what `compare` compares)."""
        record = record_of(self.trace, self.options, self.result.meta, self.seconds)
        return rows_from_report(record, self.report)


class Frame:
    """An attribute of `Analysis` that is a polars frame: `build(run)` of every trace, each
    with a leading `trace` column, stacked; built on first read and kept."""

    def __init__(self, build: Callable[[Run], pl.DataFrame], doc: str) -> None:
        self.build = build
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Frame: ...
    @overload
    def __get__(self, obj: Analysis, owner: type | None = None) -> pl.DataFrame: ...
    def __get__(self, obj: Analysis | None, owner: type | None = None) -> Frame | pl.DataFrame:
        if obj is None:
            return self
        if self.name not in obj._frames:
            obj._frames[self.name] = pl.concat(
                self.build(r).select(pl.lit(r.trace).alias("trace"), pl.all()) for r in obj.runs
            )
        return obj._frames[self.name]


class Analysis:
    """One or more analyzed traces (`analyze`): every level of the report as a polars frame
    (docs/json-output.md names and explains each column), the report, and its renderings.

    With several traces the frames stack them (the `trace` column tells them apart); `a[i]` or
    `a["path"]` is the analysis of one, and `report`, `to_json()`, `to_markdown()` and
    `to_csv()` need one.
    """

    # one line per frame: `build` takes one trace's `Run` (docs/api.md, "Adding a frame")
    stages = Frame(lambda r: levels.stage_frame(r.report), "per stage: work, times, MFU, verdict")
    instances = Frame(lambda r: levels.instance_frame(r.report), "per stage of each image")
    decode_steps = Frame(lambda r: levels.decode_step_frame(r.report), "per decode step")
    top_kernels = Frame(lambda r: levels.kernel_frame(r.report), "each stage's top kernels")
    host = Frame(lambda r: levels.host_frame(r.report), "host/GPU breakdown per stage, median step")
    ranges = Frame(lambda r: r.result.ranges, "every NVTX range with its attributed GPU time")
    model = Frame(lambda r: levels.model_frame(r.report), "all stages together")
    context = Frame(lambda r: levels.context_frame(r.report), "the C of each instance's decode")
    roofline = Frame(lambda r: levels.roofline_frame(r.report), "intensity, achieved FLOP/s")
    run = Frame(lambda r: levels.run_frame(r.report), "GPU, peaks, context mode, warnings")

    def __init__(self, analyzed: Sequence[Run]) -> None:
        if not analyzed:
            raise ValueError("an Analysis holds at least one trace")
        self.runs = tuple(analyzed)
        self._frames: dict[str, pl.DataFrame] = {}

    @classmethod
    def frames(cls) -> tuple[str, ...]:
        """The names of the frame attributes."""
        return tuple(k for k, v in vars(cls).items() if isinstance(v, Frame))

    @property
    def traces(self) -> tuple[str, ...]:
        return tuple(r.trace for r in self.runs)

    @property
    def reports(self) -> tuple[MfuReport, ...]:
        return tuple(r.report for r in self.runs)

    @property
    def report(self) -> MfuReport:
        """The `MfuReport` of the one trace (`llm_perf_opt.metrics.mfu`: stages, instances, …)."""
        return self._one().report

    @property
    def warnings(self) -> tuple[str, ...]:
        """The reports' warnings (what the reader left out, implausible numbers), in order."""
        return tuple(w for r in self.runs if r.result.report for w in r.result.report.warnings)

    def to_dict(self) -> dict[str, Any]:
        """The document of `mfu-analyze --format json` as a dict."""
        return to_json(self.report)

    def to_json(self) -> str:
        """`mfu-analyze --format json`, byte for byte."""
        return to_json_text(self.report)

    def to_markdown(self) -> str:
        """`mfu-analyze --format md`, byte for byte."""
        return to_markdown(self.report)

    def to_csv(self) -> str:
        """`mfu-analyze --format csv`, byte for byte."""
        return to_csv(self.report)

    def _one(self) -> Run:
        if len(self.runs) != 1:
            raise ValueError(
                f"this Analysis holds {len(self.runs)} traces; pick one with a[i] or a[path]"
            )
        return self.runs[0]

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[Analysis]:
        return (Analysis([r]) for r in self.runs)

    def __getitem__(self, key: int | str) -> Analysis:
        if isinstance(key, str):
            found = [r for r in self.runs if r.trace == key]
            if not found:
                raise KeyError(f"{key!r} is none of {', '.join(self.traces)}")
            return Analysis(found[:1])
        return Analysis([self.runs[key]])

    def __repr__(self) -> str:
        return f"Analysis({', '.join(self.traces)}; frames: {', '.join(self.frames())})"

    def _repr_markdown_(self) -> str:
        """A notebook shows the Markdown report of each trace."""
        return "\n".join(to_markdown(r.report) for r in self.runs if r.result.report)


def _each(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    """An option that may be given as its command-line text."""
    return lambda value: parse(value) if isinstance(value, str) else value


def _stages(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(
        parse_stage_option(f"{role}={ref}") if isinstance(ref, str) else (role, ref)
        for role, ref in value.items()
    )


# Options a user may write as on the command line: "3x2", "table", {"decode": "gen@app"}, …
_PARSE: Final[dict[str, Callable[[Any], Any]]] = {
    "stages": _stages,
    "peak_source": _each(parse_peak_source),
    "crop_grid": _each(parse_crops),
    "image_hw": _each(parse_image_size),
}


def analyze_options(options: AnalyzeOptions | None = None, **values: Any) -> AnalyzeOptions:
    """`options` (default: the CLI's defaults) with `values` set, by `AnalyzeOptions` field name.

    Raises:
        TypeError: a name that is no option.
        LlmPerfOptError: a value the command line would refuse (the message names it).
    """
    names = [f.name for f in dataclasses.fields(AnalyzeOptions)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise TypeError(f"unknown option {unknown[0]!r}; the options are {', '.join(names)}")
    parsed = {k: _PARSE[k](v) if k in _PARSE else v for k, v in values.items()}
    return dataclasses.replace(options or AnalyzeOptions(), **parsed)


def _to_stderr(line: str) -> None:
    """Say a line of a batch (a trace that failed, a note) on stderr."""
    print(line, file=sys.stderr)


def _paths(path_or_paths: TracePath | Sequence[TracePath]) -> list[TracePath]:
    """The traces: a `Path` as it is; a string that is a glob or a folder of traces, expanded as
    the command line does (`runs.expand_paths`)."""
    specs: list[TracePath] = (
        [path_or_paths] if isinstance(path_or_paths, str | Path) else list(path_or_paths)
    )
    out: list[TracePath] = []
    for spec in specs:
        if isinstance(spec, str) and (runs.has_glob(spec) or Path(spec).is_dir()):
            out += [str(p) for p in runs.expand_paths([spec])]
        else:
            out.append(spec)
    return out


def analyze(
    path_or_paths: TracePath | Sequence[TracePath],
    options: AnalyzeOptions | None = None,
    *,
    progress: Progress | None = None,
    require_mfu: bool = True,
    then: Callable[[Trace, analysis.Analysis], None] | None = None,
    **option_values: Any,
) -> Analysis:
    """Analyze one trace or several, one after the other, as `mfu-analyze` does.

    Args:
        path_or_paths: an nsys export (SQLite, `.xz`, parquetdir, arrowdir, arrow), a folder of
            them or a glob, or a list of those.
        options: all options at once; `option_values` set single ones by `AnalyzeOptions`
            field name (`ctx_mode="max"`, `peak_source="measured"`, `crop_grid="3x2"`,
            `stages={"decode": "generate@app"}`, `memory_budget_bytes=1 << 30`, …).
        progress: called with a short status line before each slow step.
        require_mfu: False: a trace without the facts MFU needs keeps its `ranges` frame and
            gets no report instead of raising.
        then: called with each still-open trace and its analysis (the Perfetto timeline
            reads the GPU ops again from the open trace).

    Raises:
        LlmPerfOptError: a trace or an option the analysis cannot use (`llm_perf_opt.errors`).
    """
    opts = analyze_options(options, **option_values)
    analyzed = []
    for path in _paths(path_or_paths):
        started = time.perf_counter()
        result = analysis.analyze_trace(
            path, opts, require_mfu=require_mfu, progress=progress, then=then
        )
        analyzed.append(Run(str(path), opts, result, time.perf_counter() - started))
    return Analysis(analyzed)


def analyze_batch(
    specs: Sequence[str],
    options: AnalyzeOptions | None = None,
    *,
    jobs: int | None = None,
    dask: str | None = None,
    db: str | Path | None = None,
    outdir: str | Path | None = None,
    echo: runs.Echo = _to_stderr,
    files: RunFiles | None = None,
    progress: runs.ProgressBar | None = None,
    **option_values: Any,
) -> runs.BatchOutcome:
    """Analyze many traces as `mfu-analyze DIR/ 'glob' --db ... -j N` does: in worker processes
    (or on the Dask scheduler at `dask`), each run stored in the results database `db` and its
    reports written into `outdir` as it arrives; a trace that fails is said through `echo` and
    the others go on.

    Args:
        specs: traces, folders of traces or globs.
        options, option_values: as for `analyze`.
        jobs: worker processes (None: one per CPU, at most one per trace).
        files: the run's declared inputs and outputs, checked before any analysis (the CLI's
            own options join them); None: a new declaration.
        progress: a progress bar over the traces (the CLI's; None: none).

    Returns:
        The summary entries in the order of the traces and the exit status (0 when every trace
        was analyzed and stored).

    Raises:
        LlmPerfOptError: no trace matched, an output is an input, the database or the scheduler
            is unusable.
    """
    request = runs.BatchRequest(
        specs=tuple(specs),
        options=analyze_options(options, **option_values),
        jobs=jobs,
        dask_address=runs.dask_address_from(dask),
        db_path=None if db is None else Path(db),
        outdir=None if outdir is None else Path(outdir),
    )
    return runs.run_batch(request, echo, files, progress)


@dataclass(frozen=True)
class Comparison:
    """What `compare` found: per stage and metric the change, its noise band and the verdict."""

    comparison: RunComparison

    @property
    def deltas(self) -> pl.DataFrame:
        """One row per stage and metric (docs/many-runs.md#statistics)."""
        rows = [
            {"stage": stage, "metric": metric, **dataclasses.asdict(d)}
            for stage, deltas in self.comparison.stages.items()
            for metric, d in deltas.items()
        ]
        return pl.DataFrame(rows)

    @property
    def flags(self) -> tuple[str, ...]:
        """What differs between the two sides besides the change (GPU, model, dtype, …)."""
        return self.comparison.flags

    def regressions(self, threshold_pct: float) -> Regressions:
        """(stage, metric, Δ %) of the time metrics that regressed beyond noise by more than
        `threshold_pct` (`mfu-compare --fail-on-regression`)."""
        return regressions(self.comparison, threshold_pct)

    def to_json(self, fail_on_regression: float | None = None) -> str:
        """`mfu-compare --format json`."""
        return comparison_json(self.comparison, self._failing(fail_on_regression))

    def to_markdown(self, fail_on_regression: float | None = None) -> str:
        """`mfu-compare --format md`."""
        return comparison_markdown(self.comparison, self._failing(fail_on_regression))

    def _failing(self, threshold_pct: float | None) -> Regressions:
        return [] if threshold_pct is None else self.regressions(threshold_pct)


@dataclass(frozen=True)
class SideRuns:
    """What one side of a comparison names: its traces (expanded) and its stored run ids."""

    what: str
    traces: tuple[Path, ...]
    ids: tuple[str, ...]


Expand = Callable[[Sequence[str]], list[Path]]


def side_runs(
    specs: Sequence[TracePath], what: str, expand: Expand = runs.expand_paths
) -> SideRuns:
    """Split one side into traces (files, folders and globs, expanded by `expand`; `mfu-compare`
    also declares them as inputs) and run ids (the rest), before anything is analyzed.

    Raises:
        RunSpecError: the side names nothing.
        NoTracesError: a folder or glob matched no trace (`runs.expand_traces`).
    """
    if not specs:
        raise RunSpecError(f"no {what} runs given; write mfu-compare BASE... -- NEW...")
    given = [str(s) for s in specs]
    named = [s for s in given if runs.has_glob(s) or Path(s).exists() or not s.strip()]
    ids = tuple(s for s in given if s not in named)
    return SideRuns(what, tuple(expand(named)) if named else (), ids)


def load_runs(
    side: SideRuns, db_path: str | Path | None, options: AnalyzeOptions,
    jobs: int | None = None, dask: str | None = None,
) -> list[RunRows]:  # fmt: skip
    """The rows of one side: its run ids read from the results database `db_path`, then its
    traces analyzed now (over `jobs` processes or the Dask scheduler at `dask`).

    Raises:
        RunSpecError: run ids without `db_path`, or a trace whose analysis failed.
    """
    rows: list[RunRows] = []
    if side.ids:
        if db_path is None:
            raise RunSpecError(
                f"{side.ids[0]!r} is not a trace file; to compare stored runs by id pass --db FILE"
            )
        db = ResultsDb(db_path, readonly=True)
        try:
            rows += [db.load(db.resolve(token)) for token in side.ids]
        finally:
            db.close()
    if side.traces:
        results = fanout.analyze_many(side.traces, options, jobs=jobs, dask_address=dask)
        for result in results:
            if not result.ok:
                raise RunSpecError(f"{side.what} trace {result.trace}: {result.error}")
            rows.append(result.rows())
    return rows


Side = Analysis | SideRuns | TracePath | Sequence[TracePath]


def compare(
    base: Side,
    new: Side,
    *,
    db: str | Path | None = None,
    min_effect_pct: float = DEFAULT_MIN_EFFECT_PCT,
    seed: int = SEED,
    jobs: int | None = None,
    dask: str | None = None,
    options: AnalyzeOptions | None = None,
    **option_values: Any,
) -> Comparison:
    """Compare BASE runs against NEW runs per stage, each change with a 95 % bootstrap noise
    band, as `mfu-compare` does (docs/many-runs.md).

    Each side is an `Analysis` (of one trace or several), or traces (paths, folders, globs)
    analyzed now with `options` / `option_values` (as `analyze` takes them), or run ids of
    the results database `db`, or those two already split (`side_runs`). Both sides are split
    and expanded before either is analyzed.

    Raises:
        LlmPerfOptError: a run that is neither a trace nor a stored run, a trace that fails.
    """
    opts = analyze_options(options, **option_values)
    named = [
        side if isinstance(side, Analysis | SideRuns)
        else side_runs([side] if isinstance(side, str | Path) else side, what)
        for side, what in ((base, "BASE"), (new, "NEW"))
    ]  # fmt: skip
    sides = [
        [r.rows() for r in side.runs]
        if isinstance(side, Analysis)
        else load_runs(side, db, opts, jobs, dask)
        for side in named
    ]
    return Comparison(compare_runs(sides[0], sides[1], min_effect_pct=min_effect_pct, seed=seed))


ModelSpec = str | Path | ModelConfig | HfModel


def model_of(config: ModelSpec, tiny: bool = False) -> ModelConfig | HfModel:
    """A built-in family name (`deepseek-ocr`, …), a config.json path (Hugging Face, DeepSeek-OCR
    or ours), or a model already read."""
    if isinstance(config, ModelConfig | HfModel):
        return config
    if isinstance(config, str) and config in FAMILIES:
        return builtin_config(config, tiny=tiny)
    if tiny:
        raise ConfigError("--tiny selects a built-in config; drop it when passing --config")
    return read_hf_config(config) or load_config_json(config)


def flops(
    config: ModelSpec,
    *,
    tiny: bool = False,
    mode: str = DEFAULT_VISION_MODE,
    crops: str | tuple[int, int] | None = None,
    prefill_len: int | None = None,
    decode_tokens: int = 1,
    ctx_mode: str = "auto",
    ctx_len: int | None = None,
    dtype: str = "bfloat16",
    image_size: str | tuple[int, int] | None = None,
    images: int = 1,
    prefill_logits: LmHeadPositions = "last",
) -> dict[str, Any]:
    """Analytic per-stage FLOPs and decode bytes per step of one request: the document of
    `mfu-flops --format json` (docs/flops.md). `mode` and `crops` are DeepSeek-OCR's,
    `image_size`, `images` and `prefill_logits` a Hugging Face model's.

    Raises:
        ConfigError: an unknown family, an unreadable config, bad lengths or modes.
    """
    model = model_of(config, tiny)
    if isinstance(model, HfModel):
        return estimate_hf_run(
            model,
            prefill_len=prefill_len,
            decode_steps=decode_tokens,
            ctx_mode=ctx_mode,
            ctx_len=ctx_len,
            dtype=dtype,
            image_hw=_each(parse_image_size)(image_size),
            images=images,
            lm_head_positions=prefill_logits,
        )
    return estimate_run(
        model,
        mode=mode,
        crops=_each(parse_crops)(crops),
        prefill_len=prefill_len,
        decode_steps=decode_tokens,
        ctx_mode=ctx_mode,
        ctx_len=ctx_len,
        dtype=dtype,
    )
