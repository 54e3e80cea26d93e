"""The runner's control flow over compiled blocks, and `generate`, which writes a whole trace.

Model loading, the warmup round, then each measured image (vision, prefill, decode steps, the
second thread overlapping vision), the run-metadata mark and the tail, in CPU time order; the
file is written as `NAME.partial` in one transaction and renamed when complete.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gen_trace.metadata import ImageTiming, export_metadata_rows, run_meta
from benchmarks.gen_trace.plan import (
    BG_GTID,
    BG_STREAM,
    CCCL_DOMAIN_ID,
    DOMAIN_ID,
    IMAGE_POSITIONS,
    MAIN_GTID,
    MAIN_STREAM,
    PROMPT_TEXT_TOKENS,
    RANGE_COLOR,
    TRACE_START_NS,
    US,
    WARMUP_NEW_TOKENS,
    WARMUP_ROUNDS,
    TracePlan,
    plan_trace,
)
from benchmarks.gen_trace.timeline import Block, Run, Strings, Timeline, compile_block
from benchmarks.gen_trace.workload import (
    bg_blocks,
    decode_step_block,
    init_blocks,
    prefill_block,
    vision_block,
)
from benchmarks.gen_trace.writer import Summary, Writer, kind_columns, nvtx_row
from llm_perf_opt.vocab import NVTX_DOMAIN

SCHEMA_SQL = Path(__file__).resolve().parents[1] / "nsys_schema_3_20_3.sql"
GRAPH_TRACE_SQL = SCHEMA_SQL.with_name("nsys_schema_3_20_3_graph_trace.sql")


class Generator:
    """Builds the whole trace: the runner's control flow over compiled blocks."""

    def __init__(
        self,
        plan: TracePlan,
        seed: int,
        con: sqlite3.Connection,
        summary: Summary,
        graph_level: bool = False,
    ):
        self.plan = plan
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.strings = Strings()
        self.timeline = Timeline(self.rng)
        self.writer = Writer(con, summary, kind_columns(self.strings), graph_level)
        self.nvtx: list[tuple[Any, ...]] = []
        self.cccl_created = False
        self.measured_step = 0
        self.names = {n: self.strings.id(n) for n in ("warmup", "image", "vision", "prefill")}
        self.names |= {n: self.strings.id(n) for n in ("decode", "decode_step")}
        self.vision = compile_block(vision_block(plan.vision_kernels), self.strings, self.rng)
        self.prefill = compile_block(prefill_block(plan.prefill_kernels), self.strings, self.rng)
        self.steps: dict[int, Block] = {}
        before, load, tail = init_blocks()
        self.before = compile_block(before, self.strings, self.rng)
        self.load = compile_block(load, self.strings, self.rng)
        self.tail = compile_block(tail, self.strings, self.rng)
        bg_in, bg_out = bg_blocks()
        self.bg_in = compile_block(bg_in, self.strings, self.rng)
        self.bg_out = compile_block(bg_out, self.strings, self.rng)

    def step_block(self, n_kernels: int) -> Block:
        """The compiled decode step with `n_kernels` kernels (a few sizes only)."""
        if n_kernels not in self.steps:
            spec = decode_step_block(n_kernels)
            self.steps[n_kernels] = compile_block(spec, self.strings, self.rng)
        return self.steps[n_kernels]

    def gap(self, lo_us: float = 1.0, hi_us: float = 3.0) -> float:
        """CPU time between a range push/pop and the next event."""
        return float(np.round(self.rng.uniform(lo_us * US, hi_us * US)))

    def ours(self, start: float, end: float, name: str, payload: int | None = None) -> None:
        """A push/pop range of ours: registered name, our domain, as the `nvtx` package writes."""
        self.nvtx.append(
            nvtx_row(
                int(start),
                int(end),
                59,
                MAIN_GTID,
                text_id=self.names[name],
                domain=DOMAIN_ID,
                color=RANGE_COLOR,
                payload=payload,
            )
        )

    def run_main(self, block: Block, t0: float) -> Run:
        """Simulate a main-thread block and record its CCCL ranges."""
        run = self.writer.add(self.timeline.run(block, t0, MAIN_GTID, MAIN_STREAM))
        if len(block.lib_first):
            self._library_ranges(run)
        return run

    def _library_ranges(self, run: Run) -> None:
        b = run.block
        n = len(b.lib_first)
        push = run.api_start[b.lib_first] - self.rng.integers(300, 900, n)
        pop = run.api_end[b.lib_last] + self.rng.integers(300, 900, n)
        if not self.cccl_created:
            self.cccl_created = True
            self.nvtx.append(
                nvtx_row(
                    int(push[0]) - 2_000, None, 75, MAIN_GTID, text="CCCL", domain=CCCL_DOMAIN_ID
                )
            )
        for s, e, name in zip(push.tolist(), pop.tolist(), b.lib_name.tolist(), strict=True):
            self.nvtx.append(nvtx_row(s, e, 59, MAIN_GTID, text_id=name, domain=CCCL_DOMAIN_ID))

    def image(
        self, t: float, payload: int, n_steps: int, context0: int, measured: bool
    ) -> tuple[float, ImageTiming]:
        """One image: vision, prefill, decode steps; returns the CPU time after its pop."""
        image_start = t
        t += self.gap()
        vision_start = t
        if measured:  # first, so that the vision stage's device sync waits for it too
            self.background(vision_start + self.gap(50.0, 200.0))
        vision = self.run_main(self.vision, t + self.gap())
        t = float(vision.api_end[-1]) + self.gap()
        self.ours(vision_start, t, "vision")
        walls = {"vision": (t - vision_start) / 1e9}
        t += self.gap()
        prefill_start = t
        prefill = self.run_main(self.prefill, t + self.gap())
        t = float(prefill.api_end[-1]) + self.gap()
        self.ours(prefill_start, t, "prefill")
        walls["prefill"] = (t - prefill_start) / 1e9
        t += self.gap()
        decode_start = t
        step_walls = []
        for k in range(1, n_steps + 1):
            if measured:
                n_kernels = self.plan.step_kernels(self.measured_step)
                self.measured_step += 1
            else:
                n_kernels = self.plan.kernels_per_step
            step_start = t + self.gap()
            run = self.run_main(self.step_block(n_kernels), step_start + self.gap())
            t = float(run.api_end[-1]) + self.gap()
            self.ours(step_start, t, "decode_step", payload=context0 + k)
            step_walls.append((t - step_start) / 1e9)
        t += self.gap()
        self.ours(decode_start, t, "decode")
        walls["decode"] = (t - decode_start) / 1e9
        t += self.gap()
        self.ours(image_start, t, "image", payload=payload)
        return t + self.gap(), ImageTiming(walls, step_walls)

    def background(self, t: float) -> None:
        """The second thread: its own range and stream, overlapping the vision stage."""
        inside = self.writer.add(self.timeline.run(self.bg_in, t + self.gap(), BG_GTID, BG_STREAM))
        end = float(inside.api_end[-1]) + self.gap()
        self.nvtx.append(nvtx_row(int(t), int(end), 59, BG_GTID, text="prefetch_next_image"))
        self.writer.add(self.timeline.run(self.bg_out, end + self.gap(), BG_GTID, BG_STREAM))

    def generate(self) -> dict[str, Any]:
        """Write every row; returns the run metadata that the mark carries."""
        plan = self.plan
        lp = IMAGE_POSITIONS + PROMPT_TEXT_TOKENS
        t = float(TRACE_START_NS)
        before = self.run_main(self.before, t)
        t = float(before.api_end[-1]) + self.gap(20.0, 40.0)
        load_start = t
        load = self.run_main(self.load, t + self.gap())
        t = float(load.api_end[-1]) + self.gap()
        self.nvtx.append(
            nvtx_row(int(load_start), int(t), 60, MAIN_GTID, text="load_model", range_id=1)
        )
        t += self.gap(50.0, 100.0)
        self.nvtx.append(nvtx_row(int(t), None, 75, MAIN_GTID, text=NVTX_DOMAIN, domain=DOMAIN_ID))
        t += self.gap()
        for r in range(WARMUP_ROUNDS):
            warmup_start = t
            t, _ = self.image(t + self.gap(), r, WARMUP_NEW_TOKENS - 1, lp, measured=False)
            self.ours(warmup_start, t, "warmup")
            t += self.gap()
        self.writer.flush()
        images = []
        for i in range(plan.n_images):
            t, timing = self.image(t, i, plan.decode_steps, lp, measured=True)
            images.append(timing)
            self.writer.flush()
        meta = run_meta(self.plan, self.seed, self.rng, images, t)
        mark_id = self.strings.id(json.dumps(meta, separators=(",", ":")))
        self.nvtx.append(
            nvtx_row(
                int(t), None, 34, MAIN_GTID, text_id=mark_id, domain=DOMAIN_ID, color=RANGE_COLOR
            )
        )
        tail = self.run_main(self.tail, t + self.gap(10.0, 20.0))
        self.writer.flush()
        t = float(tail.api_end[-1]) + self.gap(100.0, 200.0)
        self.nvtx.append(nvtx_row(int(t), None, 76, MAIN_GTID, domain=DOMAIN_ID))
        self.nvtx.sort(key=lambda row: row[0])
        self.writer.con.executemany(
            f"INSERT INTO NVTX_EVENTS VALUES ({', '.join('?' * 20)})", self.nvtx
        )
        self.writer.summary.n_nvtx = len(self.nvtx)
        self.writer.summary.duration_ns = int(t) - TRACE_START_NS
        return meta


def generate(
    path: str | Path, n_kernels: int, seed: int = 0, *, graph_level: bool = False
) -> Summary:
    """Write an nsys-schema SQLite export with exactly `n_kernels` kernel rows to `path`.

    With `graph_level` the CUDA-graph replays are written as graph-level rows instead of their
    node kernels (same seed, same times otherwise), so the file has fewer kernel rows. The file
    is built next to `path` and renamed into place when complete.

    Raises:
        ValueError: `n_kernels` is too small for the trace's structure.
    """
    began = time.perf_counter()
    path = Path(path)
    plan = plan_trace(n_kernels)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    summary = Summary(path=path, plan=plan)
    con = sqlite3.connect(partial, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("PRAGMA cache_size=-262144")
        con.executescript(SCHEMA_SQL.read_text(encoding="utf-8"))
        if graph_level:
            con.executescript(GRAPH_TRACE_SQL.read_text(encoding="utf-8"))
        con.execute("BEGIN")
        gen = Generator(plan, seed, con, summary, graph_level)
        summary.meta = gen.generate()
        export_metadata_rows(con, path, summary.duration_ns, gen.strings)
        con.executemany(
            "INSERT INTO StringIds VALUES (?, ?)", ((i, s) for s, i in gen.strings.ids.items())
        )
        con.execute("COMMIT")
    finally:
        con.close()
    os.replace(partial, path)
    summary.seconds = time.perf_counter() - began
    return summary
