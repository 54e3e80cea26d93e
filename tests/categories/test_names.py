"""Short kernel names: distinct in every top-kernel table, the full name kept in the outputs."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from llm_perf_opt.analysis import AnalyzeOptions, analyze_trace
from llm_perf_opt.cli.analyze import main as analyze_cli
from llm_perf_opt.kernels.names import short_name, short_names
from tests.helpers.paths import TRACES

TRACE = TRACES / "dsocr_v1_base.sqlite.xz"


def test_templates_trimmed_to_the_op_and_dtype() -> None:
    name = (
        "void at::native::elementwise_kernel<(int)128, (int)4, void at::native::"
        "gpu_kernel_impl_nocast<at::native::CUDAFunctor_add<c10::BFloat16>>(at::"
        "TensorIteratorBase &, const T1 &)::[lambda(int) (instance 1)]>(int, T3)"
    )
    assert short_name(name) == "elementwise_kernel · add (bf16)"
    assert short_name("nvjet_sm90_tst_64x8_64x16_4x1_v_bz_TNT") == (
        "nvjet_sm90_tst_64x8_64x16_4x1_v_bz_TNT"
    )
    assert short_names(["f<int>(a)", "f<int>(b)", "f<int>(a)"]) == [
        "f (i32) [1]", "f (i32) [2]", "f (i32) [1]",
    ]  # fmt: skip


def test_every_table_shows_distinct_names_and_outputs_keep_the_full_one(tmp_path: Path) -> None:
    report = analyze_trace(TRACE, AnalyzeOptions(top_kernels=25)).report
    assert report is not None
    for stage in report.stages.values():
        labels = [k.label for k in stage.top_kernels]
        assert len(set(labels)) == len(labels), stage.stage
        assert all(len(label) <= 72 for label in labels)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(analyze_cli, [str(TRACE), "--format", "json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    names = [k["name"] for s in json.loads(out.read_text())["stages"].values()
             for k in s["top_kernels"]]  # fmt: skip
    assert any(n.startswith("void at::native::elementwise_kernel<(int)128") for n in names)
    table = CliRunner().invoke(analyze_cli, [str(TRACE)])
    assert "elementwise_kernel · " in table.output
