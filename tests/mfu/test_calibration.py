"""The run metadata's `calibration` object: checked by the schema, every error naming its key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from llm_perf_opt.errors import MetaError
from llm_perf_opt.inputs.run_meta import load_meta_file, parse_meta
from llm_perf_opt.peaks.calibration import calibration_of, parse_calibration
from tests.helpers.calibration import CALIBRATION, calibrated_meta
from tests.helpers.committed import V1_META as META


def test_good_calibration_is_read_with_its_figures() -> None:
    cal = calibration_of(parse_meta(calibrated_meta(), "test"))
    assert cal is not None
    assert cal.peak_flops == 778.7e12 and cal.peak_bandwidth_Bps == 3.0e12
    assert cal.best_gemm.label == "square_8192" and (cal.best_gemm.m, cal.best_gemm.k) == (
        8192,
        8192,
    )
    assert [g.stage for g in cal.gemms] == [None, "decode"]
    assert cal.copy.bytes_moved == 8589934592 and cal.copy.repeats == 20
    assert cal.clocks is not None and cal.clocks.sm_mhz == 1980.0 and cal.dtype == "bf16"


def test_uncalibrated_metadata_has_none_and_null_clocks_are_allowed(tmp_path: Path) -> None:
    assert calibration_of(load_meta_file(META)) is None
    assert calibration_of(None) is None
    cal = parse_calibration(dict(CALIBRATION, clocks=None), "test")
    assert cal.clocks is None


def _broken(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """CALIBRATION with the value at `path` replaced (the key deleted when value is ...)."""
    data = copy.deepcopy(CALIBRATION)
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    if value is Ellipsis:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("peak_tflops",), ..., "`calibration.peak_tflops` is missing"),
        (("copy",), ..., "`calibration.copy` is missing"),
        (("gemms", 0, "m"), ..., "`calibration.gemms[0].m` is missing"),
        (("peak_tflops",), float("nan"), "`calibration.peak_tflops` must be a finite number"),
        (("copy", "tbps"), float("inf"), "`calibration.copy.tbps` must be a finite number"),
        (("peak_bandwidth_TBps",), -4.3, "`calibration.peak_bandwidth_TBps` must be > 0"),
        (("gemms", 1, "tflops"), 0, "`calibration.gemms[1].tflops` must be > 0, got 0"),
        (("gemms", 0, "repeats"), -1, "`calibration.gemms[0].repeats` must be ≥ 1, got -1"),
        (("gemms", 0, "k"), 8192.5, "`calibration.gemms[0].k` must be an integer"),
        (("gemms", 1, "stage"), "encode", "`calibration.gemms[1].stage` must be one of"),
        (("peak_tflops",), True, "`calibration.peak_tflops` must be a number"),
        (("clocks", "sm_mhz"), -1, "`calibration.clocks.sm_mhz` must be > 0, got -1"),
        (("gemms",), [], "`calibration.gemms` needs at least 1 item(s), has 0"),
    ],
)
def test_malformed_calibration_names_the_key(
    path: tuple[str | int, ...], value: Any, message: str
) -> None:
    with pytest.raises(MetaError, match=r"run\.meta\.json") as info:
        calibration_of(parse_meta(calibrated_meta(_broken(path, value)), "run.meta.json"))
    assert message in str(info.value)


def test_nan_written_by_json_is_rejected(tmp_path: Path) -> None:
    """Python's json writes NaN as a bare token and reads it back: the check must see it."""
    path = tmp_path / "nan.run.meta.json"
    path.write_text(json.dumps(calibrated_meta(_broken(("copy", "median_s"), float("nan")))))
    with pytest.raises(MetaError, match=r"`calibration.copy.median_s` must be a finite number"):
        calibration_of(load_meta_file(path))


def test_calibration_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(MetaError, match="`calibration` must be an object"):
        calibration_of(parse_meta(calibrated_meta([1, 2]), "test"))
