"""D3, D4, D5, D16: renamed/missing columns, views, NULLs, text and huge ids, invalid UTF-8 and
ops that end before they start, on mutated copies of the committed probe and v1 traces."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import polars as pl

from llm_perf_opt.trace import open_trace
from tests.helpers.committed import PROBE, PROBE_STAGES
from tests.helpers.contract import analyze, assert_error, assert_ok
from tests.helpers.mutate import digest, mutated, with_mark

KERNELS = "CUPTI_ACTIVITY_KIND_KERNEL"


def test_d3_renamed_column_names_column_table_and_version(tmp_path: Path) -> None:
    trace = mutated(
        PROBE, tmp_path / "t.sqlite", f"ALTER TABLE {KERNELS} RENAME COLUMN deviceId TO dev"
    )
    before = digest(trace)
    line = assert_error(analyze(trace, "--ranges-out", tmp_path / "r.csv"), "lacks column deviceId")
    assert KERNELS in line and "2025.3.2.0" in line
    assert digest(trace) == before
    nvtx = mutated(PROBE, tmp_path / "n.sqlite", "ALTER TABLE NVTX_EVENTS DROP COLUMN globalTid")
    assert_error(
        analyze(nvtx, "--ranges-out", tmp_path / "r.csv"),
        "lacks column globalTid of table NVTX_EVENTS",
    )


def test_d3_view_instead_of_a_table(tmp_path: Path) -> None:
    rt = "CUPTI_ACTIVITY_KIND_RUNTIME"
    good_view = mutated(
        PROBE,
        tmp_path / "v.sqlite",
        f"ALTER TABLE {rt} RENAME TO rt_old",
        f"CREATE VIEW {rt} AS SELECT * FROM rt_old",
    )
    out = tmp_path / "r.csv"
    assert_ok(analyze(good_view, "--ranges-out", out))
    plain = tmp_path / "plain.csv"
    assert_ok(analyze(PROBE, "--ranges-out", plain))
    assert out.read_text() == plain.read_text()  # a faithful view reads like the table
    short_view = mutated(
        PROBE,
        tmp_path / "s.sqlite",
        f"ALTER TABLE {rt} RENAME TO rt_old",
        f"CREATE VIEW {rt} AS SELECT start, globalTid, correlationId FROM rt_old",
    )
    assert_error(analyze(short_view, "--ranges-out", out), f"lacks column end of table {rt}")
    dangling = mutated(
        PROBE,
        tmp_path / "d.sqlite",
        f"ALTER TABLE {rt} RENAME TO rt_old",
        f"CREATE VIEW {rt} AS SELECT * FROM rt_old",
        "DROP TABLE rt_old",
    )
    line = assert_error(analyze(dangling, "--ranges-out", out), "lacks table")
    assert "rt_old" in line


def test_d4_nulls_in_integer_columns_are_left_out_with_a_count(tmp_path: Path) -> None:
    trace = mutated(
        PROBE,
        tmp_path / "t.sqlite",
        f"UPDATE {KERNELS} SET start = NULL WHERE rowid % 3 = 0",
        f"UPDATE {KERNELS} SET correlationId = NULL WHERE rowid % 5 = 0",
        "UPDATE NVTX_EVENTS SET globalTid = NULL WHERE rowid = 3",
        loosen=[KERNELS, "NVTX_EVENTS"],
    )
    n_null = sum(1 for i in range(1, 63) if i % 3 == 0)
    ops = open_trace(trace).gpu_ops()
    assert ops["start_ns"].null_count() == 0 and ops["end_ns"].null_count() == 0
    result = analyze(trace, "--ranges-out", tmp_path / "r.csv")
    assert_ok(result)
    assert (
        f"warning: {n_null} GPU ops without a start, end, device or process left out"
        in result.stderr
    )
    assert "warning: 1 NVTX ranges without a start time or thread left out" in result.stderr
    ranges = pl.read_csv(tmp_path / "r.csv")
    for column in ("gpu_busy_ns", "kernel_sum_ns", "cpu_duration_ns"):
        assert ranges[column].null_count() == 0 and ranges[column].min() >= 0  # type: ignore[operator]


def test_d4_text_and_out_of_range_ids_are_one_clear_error(tmp_path: Path) -> None:
    text = mutated(
        PROBE,
        tmp_path / "t.sqlite",
        f"UPDATE {KERNELS} SET deviceId = 'gpu0' WHERE rowid = 5",
        loosen=[KERNELS],
    )
    assert_error(analyze(text, "--ranges-out", tmp_path / "r.csv"), f"table {KERNELS}")
    big = mutated(
        PROBE, tmp_path / "b.sqlite", f"UPDATE {KERNELS} SET streamId = {1 << 40} WHERE rowid = 5"
    )
    assert_error(
        analyze(big, "--ranges-out", tmp_path / "r.csv"),
        f"column streamId of table {KERNELS} holds {1 << 40}",
    )


def test_d4_bytes_in_a_time_column_are_one_clear_error(tmp_path: Path) -> None:
    # found by the fuzz test: a BLOB where nsys writes integers (no cast applies at all)
    blob = mutated(
        PROBE, tmp_path / "t.sqlite", f"UPDATE {KERNELS} SET start = X'FF00'", loosen=[KERNELS]
    )
    assert_error(
        analyze(blob, "--ranges-out", tmp_path / "r.csv"),
        f"column start of table {KERNELS} holds b'",
    )


def test_d4_ids_beyond_int32_where_nsys_writes_int64(tmp_path: Path) -> None:
    # correlation ids and global ids are 64-bit in nsys: values past 2^31 are read exactly
    shift = 1 << 33
    trace = mutated(
        PROBE,
        tmp_path / "t.sqlite",
        *(
            f"UPDATE CUPTI_ACTIVITY_KIND_{kind} SET correlationId = correlationId + {shift}"
            for kind in ("KERNEL", "MEMCPY", "MEMSET", "RUNTIME")
        ),
    )
    out, plain = tmp_path / "r.csv", tmp_path / "p.csv"
    assert_ok(analyze(trace, "--ranges-out", out))
    assert_ok(analyze(PROBE, "--ranges-out", plain))
    assert out.read_text() == plain.read_text()


def test_d16_ops_ending_before_they_start_are_excluded_with_a_count(tmp_path: Path) -> None:
    trace = mutated(
        PROBE,
        tmp_path / "t.sqlite",
        f"UPDATE {KERNELS} SET end = start - 1000 WHERE rowid % 4 = 0",
        "UPDATE NVTX_EVENTS SET end = start - 5 WHERE rowid = 4 AND end IS NOT NULL",
    )
    result = analyze(trace, "--ranges-out", tmp_path / "r.csv")
    assert_ok(result)
    assert "warning: 15 GPU ops ending before they start left out" in result.stderr
    assert "NVTX ranges ending before they start left out" in result.stderr
    ranges = pl.read_csv(tmp_path / "r.csv")
    for column in ("gpu_busy_ns", "kernel_sum_ns", "cpu_duration_ns", "proj_duration_ns"):
        assert ranges[column].drop_nulls().min() >= 0  # type: ignore[operator]
    report = analyze(trace, *PROBE_STAGES, "--format", "json")
    assert_ok(report)
    data = json.loads(report.stdout)
    assert any("ending before they start" in w for w in data["warnings"])
    assert all(s["gpu_busy_s"] >= 0 for s in data["stages"].values())


def test_d5_invalid_utf8_in_nvtx_text_is_replaced(tmp_path: Path) -> None:
    trace = mutated(
        PROBE,
        tmp_path / "t.sqlite",
        "UPDATE NVTX_EVENTS SET text = CAST(X'73746167FF65' AS TEXT) WHERE text IS NOT NULL",
        "UPDATE StringIds SET value = CAST(X'C328' || CAST(value AS BLOB) AS TEXT)",
    )
    out = tmp_path / "r.csv"
    assert_ok(analyze(trace, "--ranges-out", out))
    text = out.read_bytes().decode("utf-8")  # valid UTF-8, or this raises
    names = {row["name"] for row in csv.DictReader(io.StringIO(text))}
    assert "stag\ufffde" in names
    assert any(name.startswith("\ufffd(") for name in names)


def test_d5_invalid_utf8_in_the_metadata_mark(v1_plain: Path, tmp_path: Path) -> None:
    def damage(mark: dict[str, object]) -> bytes:
        text = json.dumps(mark).encode()
        return text.replace(b'"run_id": "', b'"run_id": "\xff\xfe', 1)

    trace = with_mark(v1_plain, tmp_path / "t.sqlite", damage)
    result = analyze(trace, "--format", "json")
    assert_ok(result)
    data = json.loads(result.stdout)
    assert data["meta_source"] == "trace mark"
    assert data["stages"]["decode"]["flops"] > 0


def test_d5_error_line_is_capped_for_a_1mb_nvtx_name(tmp_path: Path) -> None:
    huge = "n" * (1 << 20)
    trace = mutated(
        PROBE,
        tmp_path / "t.sqlite",
        "UPDATE NVTX_EVENTS SET text = ? WHERE rowid = 3",
        params=[huge],
    )
    line = assert_error(
        analyze(trace, *PROBE_STAGES, "--stage", "vision=absent", "--format", "json"), "absent"
    )
    assert len(line) < 1000 and "more characters)" in line
