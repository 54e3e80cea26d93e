"""The run metadata the mark carries, and the export's own metadata, device and process tables.

The run metadata is the runner's `llm_perf_opt.run_meta/1` record (docs/run-metadata.md) with the
facts of the generated ranges; it is checked with the analyzer's own reader and the shipped JSON
Schema before it is written, so a generated trace cannot carry a record the analysis would refuse.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gen_trace.plan import (
    BG_GTID,
    BG_STREAM,
    GLOBAL_PID,
    GPU_NAME,
    GRAPH_NODES,
    IMAGE_POSITIONS,
    IMAGE_SIDE_PX,
    MAIN_GTID,
    MAIN_STREAM,
    N_PARAMS,
    PID,
    PROMPT_TEXT_TOKENS,
    SESSION_START_UTC_NS,
    TRACE_START_NS,
    VISION_TOKENS,
    VOCAB_SIZE,
    WARMUP_NEW_TOKENS,
    WARMUP_ROUNDS,
    TracePlan,
)
from benchmarks.gen_trace.timeline import Strings
from benchmarks.gen_trace.workload import GRAPH_NODE_ID_BASE
from llm_perf_opt import __version__
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.inputs.run_meta import parse_meta
from llm_perf_opt.vocab import NVTX_DOMAIN, RUN_META_SCHEMA_ID


@dataclass(frozen=True)
class ImageTiming:
    """Wall-clock facts of one image for the run metadata (CPU range durations, seconds)."""

    wall_s: dict[str, float]
    decode_step_wall_s: list[float]


def run_meta(
    plan: TracePlan,
    seed: int,
    rng: np.random.Generator,
    images: list[ImageTiming],
    end_ns: float,
) -> dict[str, Any]:
    """The run-metadata JSON, consistent with the ranges just written.

    `rng` draws the run id and the generated token ids.

    Raises:
        MetaError: the record does not match `run_meta.schema.json` (the analyzer's own check).
    """
    lp = IMAGE_POSITIONS + PROMPT_TEXT_TOKENS
    created = datetime.fromtimestamp((SESSION_START_UTC_NS + end_ns) / 1e9, tz=UTC)
    config = builtin_config("deepseek-ocr").to_dict()
    meta: dict[str, Any] = {
        "schema": RUN_META_SCHEMA_ID,
        "run_id": str(uuid.UUID(bytes=rng.bytes(16), version=4)),
        "tool_version": __version__,
        "created_utc": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "nvtx_domain": NVTX_DOMAIN,
        "nvtx_enabled": True,
        "model": {
            "name": "deepseek-ocr",
            "family": "deepseek-ocr",
            "tiny": False,
            "config": config,
            "hf_config": {  # stand-in: the real one is transformers' to_dict()
                "model_type": "deepseek_vl_v2",
                "sam_config": config["sam"],
                "clip_config": config["clip"],
                "text_config": config["text"],
            },
            "n_params": N_PARAMS,
            "random_weights": True,
            "attn_implementation": "sdpa",
            "experts_implementation": "eager",
            "sdpa_cudnn": False,
        },
        "dtype": "bfloat16",
        "device": {"type": "cuda", "name": GPU_NAME},
        "mode": "base",
        "context": {"context_len_mode": "auto", "context_len_fixed": None},
        "warmup": {
            "rounds": WARMUP_ROUNDS,
            "synthetic": True,
            "max_new_tokens": WARMUP_NEW_TOKENS,
        },
        "max_new_tokens": plan.max_new_tokens,
        "prompt_text_tokens": PROMPT_TEXT_TOKENS,
        "seed": seed,
        "versions": {"python": "3.12.3", "torch": "2.11.0+cu130", "transformers": "5.17.0"},
        "images": [
            {
                "index": i,
                "source": "synthetic",
                "width": IMAGE_SIDE_PX,
                "height": IMAGE_SIDE_PX,
                "mode": "base",
                "crop_grid": None,
                "n_crops": 0,
                "vision_tokens": VISION_TOKENS,
                "image_positions": IMAGE_POSITIONS,
                "prefill_len": lp,
                "decode_steps": plan.decode_steps,
                "decode_context_lens": [lp + k for k in range(1, plan.decode_steps + 1)],
                "wall_s": timing.wall_s,
                "decode_step_wall_s": timing.decode_step_wall_s,
                "generated_token_ids": rng.integers(0, VOCAB_SIZE, plan.max_new_tokens).tolist(),
            }
            for i, timing in enumerate(images)
        ],
    }
    parse_meta(meta, "generated run metadata")
    return meta


def export_metadata_rows(
    con: sqlite3.Connection, path: Path, duration_ns: int, strings: Strings
) -> None:
    """Export/capture metadata, device, process and thread tables, as a real export has them."""
    export = [
        ("EXPORT_PRODUCT_NAME", "NVIDIA Nsight Systems"),
        ("EXPORT_PRODUCT_VERSION", "2025.3.2.0"),
        ("EXPORT_PRODUCT_DATE", "2025.3"),
        ("EXPORT_SCHEMA_VERSION", "3.20.3"),
        ("EXPORT_SCHEMA_VERSION_MAJOR", "3"),
        ("EXPORT_SCHEMA_VERSION_MINOR", "20"),
        ("EXPORT_SCHEMA_VERSION_MICRO", "3"),
        ("EXPORT_SCHEMA_VERSION_CKSUM", "4021079525 170230"),
        ("EXPORT_PLATFORM", "linux-desktop"),
        ("EXPORT_ARCH", "x64"),
        ("EXPORT_HOST", "llm_perf_opt-gen_trace"),
        ("EXPORT_USER", ""),
        ("EXPORT_PARAM_INPUT_FILE", path.with_suffix(".nsys-rep").name),
        ("EXPORT_PARAM_OUTPUT_FILE", path.name),
        ("EXPORT_PARAM_LAZY", "true"),
        ("EXPORT_PARAM_TIME_NORMALIZE", "false"),
        ("EXPORT_PARAM_TIME_SHIFT", "0"),
    ]
    con.executemany("INSERT INTO META_DATA_EXPORT VALUES (?, ?)", export)
    capture = [
        ("DEVICE_ID", "Local (CLI)"),
        ("CAPTURE_EVENT_TYPE", "NvtxEvents"),
        ("CAPTURE_EVENT_TYPE", "Cuda"),
        ("PROCESS_0:COMMAND", "python3"),
        ("PROCESS_0:ARGUMENT_0", "scripts/run_dsocr.py"),
        ("PROCESS_0:COLLECT_NVTX_TRACE", "true"),
        ("PROCESS_0:COLLECT_CUDA_TRACE", "true"),
        ("PROCESS_0:CUDA_GRAPH_TRACE_OPTIONS:MODE", "Node"),
    ]
    con.executemany("INSERT INTO META_DATA_CAPTURE VALUES (?, ?)", capture)
    vm = 1 << 48
    start_ns = TRACE_START_NS - 600_000_000
    stop_ns = TRACE_START_NS + duration_ns + 100_000_000
    con.execute(
        "INSERT INTO ANALYSIS_DETAILS VALUES (?, ?, ?, ?)",
        (vm, stop_ns - start_ns, start_ns, stop_ns),
    )
    utc = datetime.fromtimestamp(SESSION_START_UTC_NS / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    con.execute(
        "INSERT INTO TARGET_INFO_SESSION_START_TIME VALUES (?, ?, ?)",
        (SESSION_START_UTC_NS, utc, utc),
    )
    con.execute(
        "INSERT INTO TARGET_INFO_GPU VALUES (?, 0, ?, '0000:00:06.0', 1, 52428800, 85017493504, "
        "3352320000000, 1980000000, 132, 0, 'd8081a7a-935c-5a61-2362-e5b3aa0a0403', 0, 'GH100', "
        "0, '', '', 161, 0, 65536, 0, 65536, 49152, 232448, 233472, 65536, 32, 3, 64, 32, 1024, "
        "1024, 1024, 64, 2147483647, 65535, 65535, 9, 0, 9, 0)",
        (vm, GPU_NAME),
    )
    con.execute("INSERT INTO TARGET_INFO_CUDA_DEVICE VALUES (0, 0, ?)", (PID,))
    con.execute(
        "INSERT INTO TARGET_INFO_CUDA_CONTEXT_INFO VALUES (?, 0, 1, ?, 0, 1, 0, 0)",
        (MAIN_STREAM, PID),
    )
    con.executemany(
        "INSERT INTO TARGET_INFO_CUDA_STREAM VALUES (?, 0, 1, ?, 1, ?, ?)",
        [(MAIN_STREAM, PID, 0, 3), (BG_STREAM, PID, 0, 2)],
    )
    others = [(PID - 12, "nsys-launcher"), (PID - 3, "nsys"), (PID - 2, "timeout")]
    con.executemany(
        "INSERT INTO PROCESSES VALUES (?, ?, ?)",
        [(GLOBAL_PID, PID, "python3")] + [((1 << 48) | (p << 24), p, n) for p, n in others],
    )
    threads = [
        (strings.id("python3"), 20, MAIN_GTID),
        (strings.id("[NSys]"), 10, GLOBAL_PID | (PID + 10)),
        (strings.id("CUPTI worker thread"), 10, GLOBAL_PID | (PID + 29)),
        (strings.id("python3"), 20, BG_GTID),
    ]
    con.executemany("INSERT INTO ThreadNames VALUES (?, ?, ?)", threads)
    node_name = strings.id("Graph Node Creation")
    graph_events: list[tuple[int, int, int, int, int, int, int | None]] = []
    for node in range(GRAPH_NODES):
        t = TRACE_START_NS + 1_000_000 + node * 40_000
        graph_events.append((t, t, 77, MAIN_GTID, node_name, (1 << 32) + node, None))
        graph_events.append(
            (
                t + 5_000_000,
                t + 5_000_000,
                77,
                MAIN_GTID,
                node_name,
                GRAPH_NODE_ID_BASE + node,
                (1 << 32) + node,
            )
        )
    con.executemany("INSERT INTO CUDA_GRAPH_NODE_EVENTS VALUES (?, ?, ?, ?, ?, ?, ?)", graph_events)
