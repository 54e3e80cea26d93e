"""`--html` of every committed trace and of a comparison, opened in a real headless chromium:
no console error, no request but the file itself, the stage names and MFU figures in the page,
a plot canvas per figure, and a screenshot that is not blank."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Final

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from llm_perf_opt.cli.compare import main as compare_main
from llm_perf_opt.report import format_pct
from tests.helpers.committed import CASES
from tests.helpers.paths import TRACES
from tests.helpers.visual import Analyzed

MAX_BYTES: Final = 5 * 1024 * 1024
# Share of the screenshot's pixels that must differ from the page background.
MIN_INK: Final = 0.03


def open_page(browser: Any, path: Path) -> tuple[Any, list[str], list[str], bytes]:
    """The page loaded and rendered: its text, the console errors and page errors, every URL
    requested, and a full-page screenshot."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri(), wait_until="load")
    page.locator("canvas").first.wait_for()  # Playwright's locators see into shadow roots
    page.wait_for_timeout(300)  # the plots draw in the frame after the canvases appear
    shot = page.screenshot(full_page=True)
    return page, problems, requests, shot


def ink(png: bytes) -> float:
    """Share of pixels unlike the top-left one (the page background)."""
    pixels = imread(io.BytesIO(png), format="png")[..., :3]
    return float(np.mean(np.any(np.abs(pixels - pixels[0, 0]) > 0.05, axis=-1)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_report_page_in_a_browser(analyzed: Analyzed, browser: Any, name: str) -> None:
    out = analyzed(name)
    assert out.html.stat().st_size < MAX_BYTES
    page, problems, requests, shot = open_page(browser, out.html)
    try:
        assert problems == []
        assert requests == [out.html.as_uri()]  # nothing but the file itself
        text = page.inner_text("body")
        for stage, sdoc in out.doc["stages"].items():
            assert stage in text and sdoc["verdict"] in text
            assert format_pct(sdoc["mfu_trace"]) in text and format_pct(sdoc["mfu_wall"]) in text
        if out.doc["stages"]:
            assert format_pct(out.doc["model"]["mfu_trace"]) in text
        phases = _phase_rows(page)
        for phase, pdoc in (out.doc["engine_phases"] or {}).items():  # the engine phase table
            cells = (format_pct(pdoc["mfu_trace"]), format_pct(pdoc["mfu_wall"]), pdoc["verdict"])
            assert cells == phases[phase], phase
        assert len(phases) == len(out.doc["engine_phases"] or {})
        assert f"Trace: {out.trace}" in text  # the run metadata
        assert page.evaluate("document.querySelectorAll('script[src], link[href]').length") == 0
        titles = page.evaluate("Bokeh.documents[0].roots().map(r => r.title.text)")
        stages = out.doc["stages"].values()
        expected = ["Where each stage's wall time goes", "MFU trace vs wall"] if stages else []
        expected += ["Decode step time", "Decode step MFU"] if out.doc["decode_steps"] else []
        if out.doc["engine_steps"]:
            expected += ["Engine step time", "Engine step MFU", "Tokens per engine step"]
            _check_step_series(page, out.doc["engine_steps"])
        if any("host" in s for s in stages):
            expected += ["Where the wall time goes: Host span", "Where the wall time goes: GPU"]
        expected += ["Roofline"] if any(s.get("bound") for s in stages) else []
        if any(s["categories"] for s in stages) or out.doc["trace_categories"]:
            expected += ["Where the kernel time goes, by category"]
            _check_category_bars(page, out.doc)
        assert [t for t in titles if not any(t.startswith(e) for e in expected)] == []
        assert len(titles) == len(expected)
        assert page.locator("canvas").count() >= len(titles)
        assert ink(shot) > MIN_INK
    finally:
        page.close()


def _check_category_bars(page: Any, doc: dict[str, Any]) -> None:
    """The category plot's bars: per range and category, the JSON's share (in %) and time."""
    bars = page.evaluate(
        """() => { const doc = Bokeh.documents[0];
            const fig = doc.roots().find(r => r.title.text.startsWith('Where the kernel time'));
            return fig.renderers.flatMap(r => { const d = r.data_source.data;
                return [...d.range].map((g, i) => [g, d.category[i], d.share[i], d.ms[i]]); }); }"""
    )
    expected = {
        (s, c): v for s, sdoc in doc["stages"].items() for c, v in sdoc["categories"].items()
    }
    step = (doc["decode_step_categories"] or {}).get("categories", {})
    expected |= {("median decode step", c): v for c, v in step.items()}
    expected |= {("whole trace", c): v for c, v in (doc["trace_categories"] or {}).items()}
    assert {(g, c) for g, c, _, _ in bars} == set(expected)
    for g, c, share, ms in bars:
        assert share == pytest.approx(100 * expected[g, c]["share"], rel=1e-12)
        assert ms == pytest.approx(1e3 * expected[g, c]["time_s"], rel=1e-9)


def _phase_rows(page: Any) -> dict[str, tuple[str, str, str]]:
    """The engine phase table as the DOM holds it: per phase, its MFU trace, MFU wall and
    verdict cells, read by the table's own header."""
    rows: list[dict[str, str]] = page.evaluate(
        """() => [...document.querySelectorAll('table')]
            .filter(t => [...t.querySelectorAll('th')].some(h => h.textContent === 'verdict')
                && [...t.querySelectorAll('th')].some(h => h.textContent === 'phase'))
            .flatMap(t => {
                const head = [...t.querySelectorAll('th')].map(h => h.textContent);
                return [...t.querySelectorAll('tbody tr')].map(r => Object.fromEntries(
                    [...r.querySelectorAll('td')].map((c, i) => [head[i], c.textContent])));
            })"""
    )
    return {r["phase"]: (r["MFU trace"], r["MFU wall"], r["verdict"]) for r in rows}


def _check_step_series(page: Any, steps: list[dict[str, Any]]) -> None:
    """The per-step plots' data in the page's Bokeh document: a value per engine step, equal
    to the JSON's (MFU in %, times in ms), and the hover tool that shows them."""
    data = page.evaluate(
        """() => { const doc = Bokeh.documents[0];
            const fig = doc.roots().find(r => r.title.text.startsWith('Engine step MFU'));
            const src = fig.renderers.map(r => r.data_source).find(s => s.data.mfu);
            const hovers = fig.toolbar.tools.filter(t => t.type === 'HoverTool').length;
            return {step: [...src.data.step], mfu: [...src.data.mfu],
                    mfu_wall: [...src.data.mfu_wall], wall: [...src.data.wall],
                    tokens: [...src.data.tokens], phase: [...src.data.phase], hovers}; }"""
    )
    assert data["hovers"] == 1
    assert data["step"] == [s["step"] for s in steps]
    assert data["phase"] == [s["phase"] for s in steps]
    assert data["mfu"] == pytest.approx([100 * s["mfu_trace"] for s in steps], rel=1e-12)
    assert data["mfu_wall"] == pytest.approx([100 * s["mfu_wall"] for s in steps], rel=1e-12)
    assert data["wall"] == pytest.approx([1e3 * s["wall_s"] for s in steps], rel=1e-12)
    assert data["tokens"] == [s["ctx_tokens"] + s["gen_tokens"] for s in steps]


@pytest.mark.parametrize(
    ("base_name", "new_name"),
    [
        ("dsocr_v1_base.sqlite.xz", "dsocr_v1_base_gmm.sqlite.xz"),
        # two serving loops (nsys and PyTorch profiler): their engine phases are compared
        ("llama_1b_serve.sqlite.xz", "llama_1b_serve_torch.pt.trace.json.gz"),
    ],
)
def test_comparison_page_in_a_browser(
    browser: Any, tmp_path: Path, base_name: str, new_name: str
) -> None:
    """`mfu-compare --html`: the per-stage (or per engine phase) deltas and their noise bands
    in the page."""
    html, js = tmp_path / "compare.html", tmp_path / "compare.json"
    base, new = TRACES / base_name, TRACES / new_name
    args = [str(base), "--", str(new), "--html", str(html), "--format", "json", "-o", str(js)]
    result = CliRunner().invoke(compare_main, args)
    assert result.exit_code == 0, result.output
    assert html.stat().st_size < MAX_BYTES
    page, problems, requests, shot = open_page(browser, html)
    try:
        assert problems == [] and requests == [html.as_uri()]
        text = page.inner_text("body")
        doc = json.loads(js.read_text())
        assert doc["stages"]
        for stage, deltas in doc["stages"].items():
            for d in deltas.values():
                assert f"{d['delta_pct']:+.1f}%" in text, stage
                assert f"[{d['ci_low_pct']:+.1f}%, {d['ci_high_pct']:+.1f}%]" in text
        assert base_name in text and new_name in text
        assert ink(shot) > MIN_INK
    finally:
        page.close()


def test_page_without_plots_is_plain_html_with_text_escaped() -> None:
    """A page whose parts draw nothing (a comparison without common stages) still renders, and
    text from a trace (range or kernel names) never becomes markup."""
    from llm_perf_opt.report.html import Part, page

    text = page("t", ["Trace: <x>.sqlite"], [Part("p", lines=lambda _s: ["a <script>b"])], None)
    assert "<script>" not in text and "a &lt;script&gt;b" in text
    assert "&lt;x&gt;.sqlite" in text and text.startswith("<!DOCTYPE html>")
