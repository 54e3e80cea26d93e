"""The real H100 DeepSeek-OCR traces in traces/, analyzed once per option set and memoized.

`RealTraces` memoizes every expensive step (decompressing, `mfu-analyze --format json` through
click's CliRunner, the independent attribution), so the acceptance tests can ask for the same
analysis many times and pay for it once.
"""

from __future__ import annotations

import json
import lzma
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import polars as pl
from click.testing import CliRunner

from llm_perf_opt.attribution import Attribution, RangeSelection, attribute
from llm_perf_opt.cli.analyze import main
from llm_perf_opt.trace import open_trace
from tests.helpers.paths import TRACES

NAMES: Final = ("dsocr_v1_base", "dsocr_v1_gundam", "dsocr2_base")
STAGES: Final = ("vision", "prefill", "decode")
DOMAIN: Final = "llm_perf_opt"
# NVTX push/pop and start/end range event types of NVIDIA's SQLite export (docs/architecture.md).
RANGE_EVENT_TYPES: Final = (59, 60, 70, 71)


@dataclass(frozen=True)
class Expected:
    """What each trace was made from (scripts/make_traces.sh, traces/README.md)."""

    family: str
    mode: str
    crop_grid: tuple[int, int] | None
    prefill_len: int


# Lp as the runner recorded it; the tests re-derive it from flops.analytic's image layout.
EXPECTED: Final = {
    "dsocr_v1_base": Expected("deepseek-ocr", "base", None, 282),
    "dsocr_v1_gundam": Expected("deepseek-ocr", "gundam", (2, 3), 912),
    "dsocr2_base": Expected("deepseek-ocr2", "base", None, 266),
}


def run_cli(*args: str | Path) -> str:
    """`mfu-analyze ARGS` in-process; its stdout (fails the test on a non-zero exit)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def strip_warmup(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` without the `warmup` range, every range nested in it (time containment
    on the same thread) and the GPU work launched inside it."""
    shutil.copyfile(src, dst)
    with sqlite3.connect(dst) as con:
        windows = con.execute(
            "SELECT e.start, e.end, e.globalTid FROM NVTX_EVENTS e "
            "LEFT JOIN StringIds s ON e.textId = s.id "
            f"WHERE coalesce(e.text, s.value) = 'warmup' AND e.eventType IN {RANGE_EVENT_TYPES}"
        ).fetchall()
        assert len(windows) == 1, windows
        start, end, tid = windows[0]
        con.execute(
            f"DELETE FROM NVTX_EVENTS WHERE eventType IN {RANGE_EVENT_TYPES} "
            "AND globalTid = ? AND start >= ? AND end <= ?",
            (tid, start, end),
        )
        launches = (
            "SELECT correlationId FROM CUPTI_ACTIVITY_KIND_RUNTIME "
            "WHERE globalTid = ? AND start >= ? AND start <= ?"
        )
        for table in ("KERNEL", "MEMCPY", "MEMSET"):
            con.execute(
                f"DELETE FROM CUPTI_ACTIVITY_KIND_{table} WHERE globalPid = (? / 16777216) * "
                f"16777216 AND correlationId IN ({launches})",
                (tid, tid, start, end),
            )


@dataclass
class RealTraces:
    """Lazily computed, memoized views of the committed traces."""

    scratch: Path
    _plain: dict[str, Path] = field(default_factory=dict)
    _json: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    _attr: dict[str, Attribution] = field(default_factory=dict)

    def xz(self, name: str) -> Path:
        return TRACES / f"{name}.sqlite.xz"

    def plain(self, name: str) -> Path:
        """The decompressed export (decompressed once)."""
        if name not in self._plain:
            path = self.scratch / f"{name}.sqlite"
            with lzma.open(self.xz(name)) as src, path.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            self._plain[name] = path
        return self._plain[name]

    def stripped(self, name: str) -> Path:
        path = self.scratch / f"{name}.nowarmup.sqlite"
        if not path.exists():
            strip_warmup(self.plain(name), path)
        return path

    def report(self, name: str, *args: str, source: str = "plain") -> dict[str, Any]:
        """`mfu-analyze TRACE ARGS --format json`; `source` is xz (the committed file, read
        directly), plain (decompressed) or stripped (warmup removed)."""
        key = (name, source, args)
        if key not in self._json:
            path = {"xz": self.xz, "plain": self.plain, "stripped": self.stripped}[source](name)
            self._json[key] = json.loads(run_cli(path, *args, "--format", "json"))
        return self._json[key]

    def auto(self, name: str) -> dict[str, Any]:
        """The default report: `--ctx-mode auto` on the committed .xz file."""
        return self.report(name, "--ctx-mode", "auto", source="xz")

    def attribution(self, name: str) -> Attribution:
        """The attribution with the three stage ranges selected (as docs/mfu-math.md says)."""
        if name not in self._attr:
            selection = RangeSelection(names=STAGES, domains=(DOMAIN,))
            self._attr[name] = attribute(open_trace(self.plain(name)), selection)
        return self._attr[name]

    def meta(self, name: str) -> dict[str, Any]:
        """The run metadata as the runner wrote it into the trace's NVTX mark."""
        marks = open_trace(self.plain(name)).nvtx_marks().filter(pl.col("domain") == DOMAIN)
        assert marks.height == 1, marks
        return json.loads(marks["name"][0])  # type: ignore[no-any-return]
