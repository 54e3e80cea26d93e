"""PyTorch profiler (Kineto) Chrome traces: exact times, a public trace's ranges against an
independent count, the nsys report of the same run from its profiler trace, both engines, and
the one-line errors for JSON that is no profiler trace."""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import polars as pl
import pytest
from benchmarks.bench_kineto import normalized
from benchmarks.gen_trace import generate
from benchmarks.sqlite_to_kineto import convert
from click.testing import CliRunner

from llm_perf_opt.analysis import Analysis, AnalyzeOptions, analyze_trace
from llm_perf_opt.attribution import MIN_MEMORY_BUDGET_BYTES, attribute
from llm_perf_opt.cli.analyze import main
from llm_perf_opt.cli.compare import main as compare_main
from llm_perf_opt.errors import CorruptTraceError, WrongFileKindError
from llm_perf_opt.report import RENDERERS
from llm_perf_opt.trace import open_trace, scratch_dirs
from llm_perf_opt.trace.kineto import KinetoTrace
from llm_perf_opt.vocab import NVTX_DOMAIN
from tests.helpers.paths import REPO

ALEXNET = (
    REPO / "tests" / "data" / "hta_alexnet" / "benchmark_result_2869224_1695835535_trace.json.gz"
)
HUGE = 1 << 40


def write_trace(path: Path, events: Iterable[str], head: str = '"schemaVersion": 1, ') -> Path:
    """A trace file from event JSON texts (numbers kept as written)."""
    path.write_text("{" + head + '"traceEvents": [' + ",\n".join(events) + "]}")
    return path


def event(cat: str, name: str, ts: str, dur: str, pid: int, tid: int, **args: Any) -> str:
    fields = ", ".join(f'"{k}": {v}' for k, v in args.items())
    return (
        f'{{"ph": "X", "cat": "{cat}", "name": "{name}", "pid": {pid}, "tid": {tid}, '
        f'"ts": {ts}, "dur": {dur}, "args": {{{fields}}}}}'
    )


@pytest.mark.parametrize(
    ("api", "kernel"),
    [("cuda_runtime", "kernel"), ("cuda_driver", "kernel"), ("Runtime", "Kernel")],
    ids=["runtime", "driver", "older-kineto"],
)
def test_microsecond_decimals_become_exact_nanoseconds(
    tmp_path: Path, api: str, kernel: str
) -> None:
    # 19 significant digits: a float cannot hold this time to the ns
    assert round(float("1707417525512283.123") * 1000) != 1707417525512283123
    path = write_trace(
        tmp_path / "t.json",
        [
            event("user_annotation", "prefill", "1707417525512280.000", "20.500", 7, 8),
            event(api, "cudaLaunchKernel", "1707417525512281.999", "1.5", 7, 8, correlation=5),
            event(kernel, "gemm", "1707417525512283.123", "2.001", 0, 3, device=0, stream=3,
                  correlation=5),
        ],
    )  # fmt: skip
    trace = open_trace(path)
    assert isinstance(trace, KinetoTrace)
    ops = trace.gpu_ops()
    assert ops.select("start_ns", "end_ns", "device_id", "stream_id").rows() == [
        (1707417525512283123, 1707417525512285124, 0, 3)
    ]
    calls = trace.api_calls(with_names=True)
    assert calls.select("start_ns", "end_ns", "name").rows() == [
        (1707417525512281999, 1707417525512283499, "cudaLaunchKernel")
    ]
    assert calls["global_pid"].to_list() == ops["global_pid"].to_list()  # the launch joins
    ranges = trace.nvtx_ranges()
    assert ranges.select("name", "domain", "pid", "tid", "start_ns", "end_ns").rows() == [
        ("prefill", "", 7, 8, 1707417525512280000, 1707417525512300500)
    ]
    names = trace.kernel_names().filter(pl.col("name_id") == ops["name_id"][0])
    assert names["name"].to_list() == ["gemm"]


def _independent_counts(path: Path) -> list[tuple[int, str, int]]:
    """(start µs, name, GPU ops) of every span: the ops whose launch (same correlation) starts
    on the span's thread within it, counted from the JSON directly."""
    with gzip.open(path, "rt") as handle:
        events = json.load(handle)["traceEvents"]
    xs = [e for e in events if e.get("ph") == "X"]
    launches = {
        e["args"]["correlation"]: e for e in xs if e.get("cat") in ("cuda_runtime", "cuda_driver")
    }
    ops = [e for e in xs if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    spans = [e for e in xs if e.get("cat") == "user_annotation"]
    counts = []
    for span in spans:
        inside = 0
        for op in ops:
            call = launches.get(op["args"]["correlation"])
            if call is None or call["tid"] != span["tid"]:
                continue
            inside += span["ts"] <= call["ts"] <= span["ts"] + span["dur"]
        counts.append((span["ts"], span["name"], inside))
    return sorted(counts)


def test_public_trace_ranges_count_the_ops_their_launches_made() -> None:
    analysis = analyze_trace(ALEXNET, AnalyzeOptions(), require_mfu=False)
    ranges = analysis.ranges.sort("cpu_start_ns", "depth")
    got = [
        (start // 1000, name, n)
        for start, name, n in ranges.select("cpu_start_ns", "name", "n_gpu_ops").rows()
    ]
    expected = _independent_counts(ALEXNET)
    assert got == expected
    assert len(got) == 8 and max(n for *_, n in got) == 79 + 16 + 3  # every op under [param|cuda]
    measured = [n for _, name, n in got if name.endswith("|measure|forward]")]
    warmup = [n for _, name, n in got if name.endswith("|warmup|forward]")]
    assert measured == [40, 40] and warmup == [41, 41]  # each forward span holds one of its name
    trace = open_trace(ALEXNET)
    assert set(trace.gpu_info()["name"]) == {"NVIDIA A100-PG509-200"}
    assert trace.sync_events().height == 41


def _busy_us_of_launches_in(path: Path, name: str) -> tuple[int, int]:
    """(ops, µs of their union) of the GPU ops launched inside the spans named `name`."""
    with gzip.open(path, "rt") as handle:
        xs = [e for e in json.load(handle)["traceEvents"] if e.get("ph") == "X"]
    spans = [e for e in xs if e.get("cat") == "user_annotation" and e["name"] == name]
    launched = {
        e["args"]["correlation"]
        for e in xs
        if e.get("cat") == "cuda_runtime"
        and any(s["ts"] <= e["ts"] <= s["ts"] + s["dur"] for s in spans)
    }
    ops = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in xs
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
        and e["args"]["correlation"] in launched
    )
    busy, reach = 0, None
    for start, end in ops:
        if reach is None or start > reach:
            busy += end - start
            reach = end
        elif end > reach:
            busy += end - reach
            reach = end
    return len(ops), busy


def test_public_trace_analyzed_with_stage_flags_on_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "ranges.csv"
    span = "[param|pytorch.model.alex_net|0|0|0|measure|forward]"
    result = CliRunner().invoke(
        main,
        [str(ALEXNET), "--stage", f"prefill={span}", "--model", "deepseek-ocr",
         "--prefill-len", "273", "--peak-tflops", "312", "--format", "json",
         "--ranges-out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["gpu_name"] == "NVIDIA A100-PG509-200"
    prefill = report["stages"]["prefill"]
    n_ops, busy_us = _busy_us_of_launches_in(ALEXNET, span)
    assert (prefill["n_gpu_ops"], round(prefill["gpu_busy_s"] * 1e6)) == (n_ops, busy_us)
    assert n_ops == 40 and prefill["n_instances"] == 2  # the span nests one of its own name
    assert pl.read_csv(out).height == 8


@pytest.fixture(scope="module")
def generated_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("kineto")
    sqlite = folder / "run.sqlite"
    generate(sqlite, 6000, seed=3)
    profile = folder / "run.pt.trace.json.gz"
    convert(sqlite, profile)
    return sqlite, profile


def _report_json(analysis: Analysis) -> Any:
    assert analysis.report is not None
    return json.loads(RENDERERS["json"](analysis.report))


def test_profiler_trace_of_a_run_gives_its_nsys_report(generated_pair: tuple[Path, Path]) -> None:
    sqlite, profile = generated_pair
    nsys = _report_json(analyze_trace(sqlite, AnalyzeOptions(memory_budget_bytes=HUGE)))
    kineto = _report_json(analyze_trace(profile, AnalyzeOptions(memory_budget_bytes=HUGE)))
    assert normalized(kineto) == normalized(nsys)
    stages = kineto["stages"]
    assert set(stages) == {"vision", "prefill", "decode"}
    assert all(s["n_kernels"] > 0 and s["flops"] > 0 for s in stages.values())


def test_one_batch_and_small_batches_give_one_report_on_a_profiler_trace(
    generated_pair: tuple[Path, Path],
) -> None:
    _, profile = generated_pair
    memory = analyze_trace(profile, AnalyzeOptions(memory_budget_bytes=HUGE))
    streamed = analyze_trace(profile, AnalyzeOptions(memory_budget_bytes=MIN_MEMORY_BUDGET_BYTES))
    assert memory.report is not None and streamed.report is not None
    for fmt in ("json", "csv", "md"):
        assert RENDERERS[fmt](streamed.report) == RENDERERS[fmt](memory.report), fmt


def _gzip_cut(keep: float) -> bytes:
    data = ALEXNET.read_bytes()
    return data[: int(len(data) * keep)]


@pytest.mark.parametrize(
    ("content", "error", "needle"),
    [
        (b'{"schemaVersion": 1, "deviceProperties": []}', WrongFileKindError, "no traceEvents"),
        (
            b'{"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, '
            b'"tid": 1, "ts": 1, "dur": 2}]}',
            WrongFileKindError,
            "without PyTorch profiler events",
        ),
        (b'{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": 1', CorruptTraceError, "parsed"),
        (_gzip_cut(0.5), CorruptTraceError, "truncated or damaged"),
        (
            b'{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, '
            b'"ts": 1, "dur": 2, "args": {"device": 0, "stream": "seven", "correlation": 3}}]}',
            CorruptTraceError,
            "streamId of CUPTI_ACTIVITY_KIND_KERNEL",
        ),
    ],
    ids=["no-events", "no-profiler-events", "cut-json", "cut-gzip", "text-stream"],
)
def test_json_that_is_no_profiler_trace_is_a_one_line_error(
    tmp_path: Path, content: bytes, error: type[Exception], needle: str
) -> None:
    path = tmp_path / "trace.json.gz"
    path.write_bytes(content)
    before = scratch_dirs()
    with pytest.raises(error, match=needle):
        open_trace(path)
    assert scratch_dirs() == before  # the half-converted tables are gone
    result = CliRunner().invoke(main, [str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0]


def test_a_profiler_run_compares_with_its_nsys_run_like_any_two_runs(
    generated_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    sqlite, profile = generated_pair
    result = CliRunner().invoke(compare_main, [str(sqlite), "--", str(profile), "--format", "json"])
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)["stages"]
    deltas = {(s, m): v["delta_pct"] for s, ms in stages.items() for m, v in ms.items()}
    assert ("decode", "busy_s") in deltas and ("prefill", "mfu_trace") in deltas
    assert set(deltas.values()) == {0.0}
    db = tmp_path / "results.sqlite"
    batch = CliRunner().invoke(main, [str(sqlite.parent), "--db", str(db), "-j", "1"])
    assert batch.exit_code == 0, batch.output
    with sqlite3.connect(db) as conn:
        names = sorted(r[0] for r in conn.execute("SELECT trace_name FROM runs"))
    assert names == sorted([sqlite.name, profile.name])


# The GPU captures of one runner configuration run under nsys and again under `--profiler
# torch` (traces/README.md): two runs of the same work on one H200.
CAPTURE_PAIRS: Final = {
    "dsocr_v1_pair": ("dsocr_v1_pair_nsys.sqlite.xz", "dsocr_v1_pair_torch.pt.trace.json.gz"),
    "llama_1b_serve": ("llama_1b_serve.sqlite.xz", "llama_1b_serve_torch.pt.trace.json.gz"),
}
# Busy time and MFU of two runs differ by run-to-run noise and each tool's overhead.
RUN_TOLERANCE = 0.03
# Ranges of fewer GPU ops (a serving step's sample or preprocess scope: 2-4 ops of a few µs)
# differ by more than that between two runs; their op counts must still be equal.
BUSY_CHECKED_OPS = 100


def assert_same_work(nsys: dict[str, Any], profiler: dict[str, Any], tolerance: float) -> None:
    """Per stage: GPU op and kernel counts and FLOPs equal, GPU busy and MFU (trace) within
    `tolerance`; the decode steps' count equal."""
    assert nsys["stages"].keys() == profiler["stages"].keys()
    for name, stage in nsys["stages"].items():
        other = profiler["stages"][name]
        for key in ("n_instances", "n_gpu_ops", "n_kernels", "flops"):
            assert other[key] == stage[key], (name, key)
        for key in ("gpu_busy_s", "mfu_trace"):
            assert other[key] == pytest.approx(stage[key], rel=tolerance), (name, key)
    assert len(profiler["decode_steps"] or []) == len(nsys["decode_steps"] or [])


def test_generated_pair_does_the_same_work(generated_pair: tuple[Path, Path]) -> None:
    sqlite, profile = generated_pair
    reports = [_report_json(analyze_trace(p, AnalyzeOptions())) for p in (sqlite, profile)]
    assert_same_work(*reports, tolerance=0.0)


def test_stage_by_stage_capture_pair_gives_one_report() -> None:
    nsys, profiler = (REPO / "traces" / name for name in CAPTURE_PAIRS["dsocr_v1_pair"])
    reports = [_report_json(analyze_trace(p, AnalyzeOptions())) for p in (nsys, profiler)]
    assert set(reports[0]["stages"]) == {"vision", "prefill", "decode"}
    assert reports[1]["gpu_name"] == reports[0]["gpu_name"] == "NVIDIA H200"
    assert_same_work(*reports, tolerance=RUN_TOLERANCE)


@pytest.mark.parametrize("pair", CAPTURE_PAIRS)
def test_every_range_of_a_capture_pair_launches_the_same_ops(pair: str) -> None:
    """Range by range in start order (stages, decode steps, serving steps and their scopes):
    the same names, the same GPU op counts, busy time within the tolerance."""
    nsys, profiler = (
        attribute(open_trace(REPO / "traces" / name)).ranges.sort("cpu_start_ns", "depth")
        for name in CAPTURE_PAIRS[pair]
    )
    nsys = nsys.filter(pl.col("domain") == NVTX_DOMAIN)  # not the CUB library's own ranges
    columns = ["name", "depth", "n_gpu_ops"]
    assert nsys.height > 20
    assert profiler.select(columns).rows() == nsys.select(columns).rows()
    busy = nsys.select("n_gpu_ops", "gpu_busy_ns", profiler=profiler["gpu_busy_ns"])
    checked = busy.filter(pl.col("n_gpu_ops") >= BUSY_CHECKED_OPS)
    assert checked.height > 10
    for ops, base, other in checked.rows():
        assert other == pytest.approx(base, rel=RUN_TOLERANCE), ops
