"""The committed traces and fixtures several test folders read, and the flags each one needs.

traces/README.md says how each trace was made; the Llama-shaped decoders carry no architecture of
their own, so they need the config and prefill length given here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from tests.helpers.paths import DATA, TRACES

PROBE: Final = DATA / "h100_probes" / "probe_threads.sqlite"
V1_XZ: Final = TRACES / "dsocr_v1_base.sqlite.xz"
V1_META: Final = TRACES / "meta" / "dsocr_v1_base.run.meta.json"
LLAMA_CONFIG: Final = TRACES / "meta" / "llama_1b_shape.config.json"
LLAMA_PREFILL_LEN: Final = 512
# Stages of the probe trace's ranges, enough for a full MFU report from flags alone.
PROBE_STAGES: Final = (
    "--stage", "vision=matmul", "--stage", "prefill=copies", "--stage", "decode=cub_ops",
    "--model", "deepseek-ocr", "--prefill-len", "273", "--decode-tokens", "8",
)  # fmt: skip
# The committed inputs by suffix: nsys exports and PyTorch-profiler traces.
SQLITE: Final = ".sqlite.xz"
KINETO: Final = ".pt.trace.json.gz"
LLAMA_SHAPED: Final = ("llama_1b_shape", "llama_1b_compile")
# What the Llama-shaped traces need besides their run metadata, as `mfu-analyze` flags and as
# `AnalyzeOptions` fields. The serving loops (`*_serve*`) need none: their run metadata carries
# the model and schedule.
LLAMA_FLAGS: Final = ("--config", str(LLAMA_CONFIG), "--prefill-len", str(LLAMA_PREFILL_LEN))
FLAGS: Final = dict.fromkeys(LLAMA_SHAPED, LLAMA_FLAGS)
LLAMA_OPTIONS: Final[dict[str, Any]] = {
    "config_path": str(LLAMA_CONFIG),
    "prefill_len": LLAMA_PREFILL_LEN,
}
OPTIONS: Final = dict.fromkeys(LLAMA_SHAPED, LLAMA_OPTIONS)
# Every committed trace, by name, with its flags.
CASES: Final = {
    p.name.removesuffix(suffix): FLAGS.get(p.name.removesuffix(suffix), ())
    for suffix in (SQLITE, KINETO)
    for p in sorted(TRACES.glob(f"*{suffix}"))
}
# Every committed SQLite trace (traces/ and tests/data), by name.
SQLITE_TRACES: Final = {
    p.name.split(".")[0]: p
    for p in sorted(TRACES.glob(f"*{SQLITE}")) + sorted(DATA.rglob("*.sqlite"))
}


def stem(path: Path) -> str:
    """A trace's name without its suffixes (`dsocr_v1_base.sqlite.xz` -> `dsocr_v1_base`)."""
    return path.name.split(".")[0]
