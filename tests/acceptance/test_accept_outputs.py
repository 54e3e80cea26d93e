"""The report files on a real trace: PNG plots, CSV and Markdown with the stage rows, and
printed percentages that mean something (decode MFU is ~0.03 %: never a bare `0.0%`)."""

from __future__ import annotations

import csv
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llm_perf_opt.report import format_pct
from tests.helpers.real_traces import NAMES, STAGES, RealTraces, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("stage_time_split.png", "mfu_trace_vs_wall.png", "decode_step_time.png")
# bytes per pixel of PNG colour types 2 (RGB) and 6 (RGBA) at bit depth 8
CHANNELS = {2: 3, 6: 4}


@dataclass(frozen=True)
class Outputs:
    doc: dict[str, Any]
    csv: Path
    markdown: Path
    plots: Path


@pytest.fixture(scope="module")
def gundam_outputs(real: RealTraces, tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    """One `mfu-analyze` run on v1 gundam writing every report file."""
    out = tmp_path_factory.mktemp("outputs")
    args = ["--csv", out / "report.csv", "--markdown", out / "report.md", "--plots", out / "img"]
    doc = real.report("dsocr_v1_gundam", "--ctx-mode", "auto", *map(str, args), source="xz")
    return Outputs(doc, out / "report.csv", out / "report.md", out / "img")


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and raw scanlines of an 8-bit RGB(A) PNG; every chunk's CRC is checked."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    pos, chunks = len(PNG_SIGNATURE), []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert depth == 8 and colour in CHANNELS
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + width * CHANNELS[colour])
    return width, height, raw


@pytest.mark.parametrize("png", PLOTS)
def test_plots_are_valid_pngs(gundam_outputs: Outputs, png: str) -> None:
    path = gundam_outputs.plots / png
    assert path.stat().st_size > 10_000
    width, height, raw = _png_pixels(path)
    assert width >= 600 and height >= 300
    assert len(set(raw)) > 50  # drawn on, not a blank canvas


def _close(text: str, value: float) -> bool:
    """A printed percentage agrees with the value to its two significant digits."""
    return abs(float(text.rstrip("%")) / (100 * value) - 1) < 0.05


def test_csv_has_the_stage_rows(gundam_outputs: Outputs) -> None:
    with gundam_outputs.csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    stages = {r["stage"]: r for r in rows if r["level"] == "stage"}
    assert list(stages) == list(STAGES)
    assert sum(r["level"] == "instance" for r in rows) == 9
    assert [r["stage"] for r in rows if r["level"] == "model"] == ["all"]
    for stage, row in stages.items():
        want = gundam_outputs.doc["stages"][stage]
        for key in ("flops", "gpu_busy_s", "wall_s", "mfu_trace", "mfu_wall"):
            assert float(row[key]) == pytest.approx(want[key], rel=1e-12), (stage, key)


def _md_stage_rows(text: str) -> dict[str, dict[str, str]]:
    """The `## MFU per stage` table: stage → column → cell."""
    section = text.split("## MFU per stage", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    head, *body = [[cell.strip() for cell in row] for row in rows]
    return {row[0]: dict(zip(head, row, strict=True)) for row in body}


def test_markdown_has_the_stage_rows(gundam_outputs: Outputs) -> None:
    text = gundam_outputs.markdown.read_text()
    rows = _md_stage_rows(text)
    assert list(rows) == [*STAGES, "model"]
    doc = gundam_outputs.doc
    for stage in STAGES:
        for column, key in (("MFU trace", "mfu_trace"), ("MFU wall", "mfu_wall")):
            cell = rows[stage][column]
            assert _close(cell, doc["stages"][stage][key]), (stage, cell)
    decode = doc["stages"]["decode"]
    assert rows["decode"]["MFU trace"] == f"{100 * decode['mfu_trace']:.2g}%"
    assert "## Context length: --ctx-mode auto" in text


@pytest.mark.parametrize("name", NAMES)
def test_terminal_table_prints_small_mfu_with_two_digits(real: RealTraces, name: str) -> None:
    table = run_cli(real.xz(name), "--ctx-mode", "auto")
    doc = real.auto(name)
    head = next(line for line in table.splitlines() if "MFU trace" in line)
    columns = [c.strip() for c in head.strip("┃").split("┃")]
    for stage in STAGES:
        line = next(line for line in table.splitlines() if line.startswith(f"│ {stage} "))
        cells = dict(zip(columns, (c.strip() for c in line.strip("│").split("│")), strict=True))
        for column, key in (("MFU trace", "mfu_trace"), ("MFU wall", "mfu_wall")):
            value = doc["stages"][stage][key]
            assert cells[column] != "0.0%" and _close(cells[column], value), (stage, cells)


@pytest.mark.parametrize(
    ("fraction", "text"),
    [
        (0.0949, "9.5%"),  # one decimal from 1 % up
        (0.01, "1.0%"),
        (0.0095, "0.95%"),  # two significant digits below 1 %
        (0.00026667, "0.027%"),  # decode MFU on the H100 traces
        (0.0000256, "0.0026%"),
        (0.0000996, "0.010%"),  # rounds up to the next decade: still two digits
        (0.0, "0.0%"),
        (None, "–"),
    ],
)
def test_format_pct_keeps_two_significant_digits(fraction: float | None, text: str) -> None:
    assert format_pct(fraction) == text
