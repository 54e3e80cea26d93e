"""Run metadata on the analysis side: validated against the schema, messages naming the keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from llm_perf_opt.errors import MetaError, MissingInputError
from llm_perf_opt.inputs.run_meta import load_meta_file, meta_from_marks, parse_meta
from tests.helpers.synth import meta_dict


def test_valid_metadata_parses() -> None:
    meta = parse_meta(meta_dict(), "test")
    assert meta.family == "deepseek-ocr" and meta.dtype == "bfloat16"
    assert [img.index for img in meta.images] == [0, 1]
    assert meta.images[0].decode_context_lens == (301, 302, 303)
    assert meta.images[1].wall_s == {"vision": 0.007, "prefill": 0.0055, "decode": 0.0095}
    assert meta.context_len_mode == "auto" and meta.nvtx_domain == "llm_perf_opt"


def _broken(edit: Any) -> dict[str, Any]:
    data = meta_dict()
    edit(data)
    return data


def _img(i: int, **changes: Any) -> Any:
    return lambda d: d["images"][i].update(changes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("images"), "`images` is missing"),
        (lambda d: d.update(schema="other/2"), "`schema` must be 'llm_perf_opt.run_meta/1'"),
        (lambda d: d["model"].update(family="llama"), "`model.family` must be one of"),
        (_img(1, prefill_len="300"), "`images[1].prefill_len` must be an integer"),
        (_img(0, prefill_len=0), "`images[0].prefill_len` must be ≥ 1, got 0"),
        (_img(0, decode_steps=True), "`images[0].decode_steps` must be an integer"),
        (_img(0, decode_context_lens=[1, 2]), "has 2 entries but decode_steps is 3"),
        (_img(0, wall_s={"vision": "fast"}), "`images[0].wall_s.vision` must be a number"),
        (_img(1, index=0), "repeated `index` values [0, 0]"),
        (_img(0, crop_grid=[3]), "`images[0].crop_grid` needs at least 2 item(s)"),
        (
            lambda d: d["context"].update(context_len_mode="min"),
            "`context.context_len_mode` must be one of",
        ),
    ],
)
def test_bad_fields_are_named(edit: Any, message: str) -> None:
    with pytest.raises(MetaError) as info:
        parse_meta(_broken(edit), "run.meta.json")
    assert str(info.value).startswith("run metadata (run.meta.json): ")
    assert message in str(info.value)


def test_meta_file(tmp_path: Path) -> None:
    path = tmp_path / "run.meta.json"
    path.write_text(json.dumps(meta_dict()))
    assert load_meta_file(path).source == str(path)
    with pytest.raises(MissingInputError, match=r"--meta file .* does not exist"):
        load_meta_file(tmp_path / "absent.json")
    path.write_text("{not json")
    with pytest.raises(MetaError, match="is not valid JSON"):
        load_meta_file(path)


def test_mark_with_our_schema_is_found_among_others() -> None:
    ours = json.dumps(meta_dict())
    marks = pl.DataFrame(
        {
            "start_ns": [5, 1, 9],
            "name": ['{"meta": "probe", "n": 4096}', ours, "step done"],
            "domain": ["", "llm_perf_opt", "llm_perf_opt"],
            "json_text": [None, None, None],
        }
    )
    meta = meta_from_marks(marks)
    assert meta is not None and meta.source == "trace mark" and len(meta.images) == 2
    assert meta_from_marks(marks.filter(pl.col("start_ns") != 1)) is None
    assert meta_from_marks(marks.clear()) is None
