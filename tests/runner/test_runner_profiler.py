"""`--profiler torch` on CPU: the Chrome trace exists, parses, holds the NVTX ranges as spans of the
same names and nesting, and carries the run metadata at its top level."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("nvtx", reason="needs the runner extra: pip install -e '.[runner]'")
import torch

from llm_perf_opt.errors import NoGpuOpsError
from llm_perf_opt.inputs.run_meta import meta_from_marks
from llm_perf_opt.runner.cli import main
from llm_perf_opt.trace import open_trace
from llm_perf_opt.vocab import RUN_META_TRACE_KEY
from tests.helpers.nvtx import Node, NvtxRecorder

torch.set_num_threads(1)

Tree = tuple[str, tuple[Any, ...]]


def span_tree(trace: dict[str, Any]) -> list[Tree]:
    """The `user_annotation` spans as a tree by time containment (one thread, as the runner)."""
    spans = [e for e in trace["traceEvents"] if e.get("cat") == "user_annotation"]
    assert len({(e["pid"], e["tid"]) for e in spans}) == 1
    spans.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
    roots: list[tuple[str, list[Any]]] = []
    stack: list[tuple[float, list[Any]]] = []
    for e in spans:
        start, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        while stack and stack[-1][0] < end:
            stack.pop()
        node: tuple[str, list[Any]] = (e["name"], [])
        (stack[-1][1] if stack else roots).append(node)
        stack.append((end, node[1]))
        assert start >= 0

    def freeze(n: tuple[str, list[Any]]) -> Tree:
        return (n[0], tuple(freeze(c) for c in n[1]))

    return [freeze(r) for r in roots]


def flatten(trees: list[Tree]) -> list[str]:
    """Names in start order (parents before children)."""
    return [n for name, children in trees for n in (name, *flatten(list(children)))]


def nvtx_tree(nodes: list[Node]) -> list[Tree]:
    return [(n.name, tuple(nvtx_tree(n.children))) for n in nodes]


def read_trace(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        trace: dict[str, Any] = json.load(f)
    return trace


def test_profiler_trace_has_the_nvtx_ranges_as_spans_and_the_metadata(
    tmp_path: Path, recorder: NvtxRecorder
) -> None:
    args = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--profiler", "torch"]
    assert main([*args, "--max-new-tokens", "3", "--warmup-rounds", "1"]) == 0
    meta = json.loads((tmp_path / "run.meta.json").read_text())
    trace = read_trace(tmp_path / "run.pt.trace.json.gz")
    assert json.loads(json.dumps(trace[RUN_META_TRACE_KEY])) == meta
    assert [json.loads(m) for m in recorder.marks] == [meta]
    tree = span_tree(trace)
    assert tree == nvtx_tree(recorder.roots)
    assert [name for name, _ in tree] == ["warmup", "image"]
    assert [name for name, _ in tree[1][1]] == ["vision", "prefill", "decode"]
    assert [name for name, _ in tree[1][1][2][1]] == ["decode_step"] * 2
    # the analyzer's reader finds the metadata and the ranges; a CPU run has no GPU work
    trace = open_trace(tmp_path / "run.pt.trace.json.gz")
    found = meta_from_marks(trace.nvtx_marks())
    assert found is not None and dict(found.raw) == meta
    ranges = trace.nvtx_ranges().sort("start_ns", "end_ns", descending=[False, True])
    assert ranges["name"].to_list() == flatten(tree)
    with pytest.raises(NoGpuOpsError, match="record_function"):
        trace.gpu_ops()


def test_profiler_without_nvtx_and_an_explicit_path(tmp_path: Path, recorder: NvtxRecorder) -> None:
    out = tmp_path / "traces" / "run.json"
    args = ["--tiny", "--device", "cpu", "--out", str(tmp_path), "--no-nvtx"]
    assert main([*args, "--profiler", "torch", "--profiler-out", str(out)]) == 0
    assert recorder.events == []
    trace = json.loads(out.read_text())
    assert trace[RUN_META_TRACE_KEY]["nvtx_enabled"] is False
    assert [name for name, _ in span_tree(trace)] == ["image"]
    assert not (tmp_path / "run.pt.trace.json.gz").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--profiler", "nsys"], "setting profiler must be one of torch"),
        (["--profiler-out", "x.json.gz"], "needs a profiler"),
        (["--profiler", "torch", "--profiler-out", "x.pt"], "must end in .json or .json.gz"),
    ],
)
def test_bad_profiler_flags_are_one_line_errors(
    flags: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--tiny", "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and needle in err and err.count("\n") == 1
