"""`mfu-flops`: the acceptance numbers, JSON keys, table output and one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_perf_opt.cli.flops import cli
from llm_perf_opt.flops.configs import builtin_config
from tests.helpers.paths import SRC


def _json(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(cli, [*args, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.output)
    return data


@pytest.mark.parametrize("ctx_len", [1, 273, 4096, 8192])
def test_acceptance_decode_flops_per_token(ctx_len: int) -> None:
    data = _json(
        "--model", "deepseek-ocr", "--mode", "base", "--prefill-len", "273",
        "--decode-tokens", "1", "--ctx-mode", "fixed", "--ctx-len", str(ctx_len),
    )  # fmt: skip
    assert data["decode_flops_per_token"] == 1_148_190_720 + 61_440 * ctx_len
    assert data["decode_flops_total"] == data["decode_flops_per_token"]
    assert data["ctx_len_used"] == ctx_len


def test_json_has_the_required_keys_and_consistent_breakdowns() -> None:
    data = _json("--model", "deepseek-ocr2", "--mode", "gundam", "--crops", "3x2",
                 "--decode-tokens", "32")  # fmt: skip
    for key in (
        "vision_flops", "prefill_flops", "decode_flops_per_token", "decode_flops_total",
        "decode_bytes_per_step", "conventions", "ctx_len_used", "breakdown",
    ):  # fmt: skip
        assert key in data
    breakdown = data["breakdown"]
    assert isinstance(breakdown, dict)
    assert sum(breakdown["vision"].values()) == data["vision_flops"]
    assert sum(breakdown["prefill"].values()) == data["prefill_flops"]
    assert sum(breakdown["decode_bytes_per_step"].values()) == data["decode_bytes_per_step"]
    # default Lp: the image positions alone (256 + 6·144 + 1), auto context mean Lp + 33/2
    assert data["prefill_len"] == data["image_positions"] == 1121
    assert data["ctx_len_used"] == 1121 + 16.5
    assert data["decode_flops_total"] == 32 * data["decode_flops_per_token"]  # type: ignore[operator]


def test_context_modes_move_decode_flops_up() -> None:
    base = ["--model", "deepseek-ocr", "--prefill-len", "273", "--decode-tokens", "64"]
    auto = _json(*base, "--ctx-mode", "auto")["decode_flops_per_token"]
    fixed = _json(*base, "--ctx-mode", "fixed", "--ctx-len", "1024")["decode_flops_per_token"]
    top = _json(*base, "--ctx-mode", "max")["decode_flops_per_token"]
    assert auto < fixed < top  # type: ignore[operator]


def test_table_output_lists_stages_and_blocks() -> None:
    result = CliRunner().invoke(cli, ["--model", "deepseek-ocr", "--mode", "gundam", "--crops",
                                      "2x3"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0
    assert "vision FLOPs / image" in result.output
    assert "decode bytes / step" in result.output
    assert "sam.rel_pos" in result.output and "text.moe_routed" in result.output


def test_config_file_in_our_form_matches_the_builtin(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(builtin_config("deepseek-ocr").to_dict()))
    from_file = _json("--config", str(path), "--prefill-len", "300")
    builtin = _json("--model", "deepseek-ocr", "--prefill-len", "300")
    assert from_file == builtin


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "mfu-flops --model deepseek-ocr" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "deepseek-ocr", "--prefill-len", "0"],
         "Error: prefill length must be ≥ 1, got 0"),
        (["--model", "deepseek-ocr", "--prefill-len", "-3"], "Error: prefill length must be ≥ 1"),
        (["--model", "deepseek-ocr", "--decode-tokens", "0"], "Error: decode tokens must be ≥ 1"),
        (["--model", "deepseek-ocr", "--ctx-mode", "fixed", "--ctx-len", "9000"],
         "Error: context length 9000 exceeds the context window of 8192 positions"),
        (["--model", "deepseek-ocr", "--ctx-mode", "fixed", "--ctx-len", "-1"],
         "Error: context length must be ≥ 1, got -1"),
        (["--model", "deepseek-ocr", "--ctx-mode", "fixed"], "Error: context mode 'fixed' needs"),
        (["--model", "deepseek-ocr", "--mode", "gundam", "--crops", "3by2"],
         "Error: crop grid '3by2'"),
        ([], "Error: give --model"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "gpt2"],
         "Error: Invalid value for '--model': 'gpt2' is not one of 'deepseek-ocr', "
         "'deepseek-ocr2'."),
        (["--model", "deepseek-ocr", "--mode", "huge"],
         "Error: Invalid value for '--mode': 'huge' is not one of 'tiny', 'small', 'base', "
         "'large', 'gundam'."),
        (["--model", "deepseek-ocr", "--ctx-mode", "sometimes"],
         "Error: Invalid value for '--ctx-mode': 'sometimes' is not one of 'auto', 'max', "
         "'fixed'."),
        (["--model", "deepseek-ocr", "--dtype", "int4"],
         "Error: Invalid value for '--dtype': 'int4' is not one of 'bfloat16', 'float16', "
         "'float32'."),
        (["--model", "deepseek-ocr", "--format", "xml"],
         "Error: Invalid value for '--format': 'xml' is not one of 'table', 'json'."),
    ],
)  # fmt: skip
def test_choices_outside_the_vocabulary_are_usage_errors(args: list[str], message: str) -> None:
    """The choices are click's, as in mfu-analyze: a usage error naming every allowed value."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == message, result.output


def test_a_mode_the_model_lacks_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(cli, ["--model", "deepseek-ocr2", "--mode", "tiny"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("Error: mode 'tiny' is not available"), result.output


def test_config_missing_keys_is_one_line_and_exit_2(tmp_path: Path) -> None:
    data = builtin_config("deepseek-ocr2").to_dict()
    del data["query_encoder"]["num_heads"]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["--config", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: config.query_encoder lacks required key 'num_heads'; add it to the config JSON"
    )


def test_model_and_config_must_agree(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(builtin_config("deepseek-ocr2").to_dict()))
    result = CliRunner().invoke(cli, ["--model", "deepseek-ocr", "--config", str(path)])
    assert result.exit_code == 2
    assert "disagrees" in result.output


def test_analytic_path_never_imports_torch() -> None:
    code = (
        "import sys; import llm_perf_opt.cli.flops, llm_perf_opt.flops.analytic, "
        "llm_perf_opt.flops.estimate; "
        "sys.exit(1 if {'torch', 'transformers', 'fvcore'} & set(sys.modules) else 0)"
    )
    src = str(SRC)
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": src}, check=False)
    assert done.returncode == 0
