"""The FLOPs model MFU divides by: the protocol `mfu.compute_mfu` sees and its DeepSeek-OCR
implementation over `analytic` and `traffic`; `resolve_config` picks the architecture.

`HfFlops` (hf_model.py) is the other implementation, for Hugging Face configs (docs/flops.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llm_perf_opt.errors import ConfigError, MissingInputError
from llm_perf_opt.flops import analytic, traffic
from llm_perf_opt.flops.configs import (
    ModelConfig,
    builtin_config,
    config_from_json_dict,
    load_config_json,
)
from llm_perf_opt.inputs.run_meta import RunMeta
from llm_perf_opt.vocab import FAMILIES, LmHeadPositions


class FlopsModel(Protocol):
    """What `compute_mfu` needs from the FLOPs model (docs/mfu-math.md)."""

    @property
    def window(self) -> int:
        """Context window (max positions): C for `--ctx-mode max`."""
        ...

    def vision_flops(self, mode: str, crop_grid: tuple[int, int] | None) -> float:
        """FLOPs of the vision stage for one image."""
        ...

    def prefill_flops(self, prefill_len: int) -> float:
        """FLOPs of the prefill forward over `prefill_len` positions."""
        ...

    def decode_flops(self, ctx_lens: Sequence[int]) -> float:
        """FLOPs of decode steps attending to `ctx_lens` positions each."""
        ...

    def decode_bytes(self, ctx_lens: Sequence[int]) -> float | None:
        """Bytes the same decode steps read (weights + KV cache); None when unknown."""
        ...

    def attention_flops(
        self,
        stage: str,
        mode: str,
        crop_grid: tuple[int, int] | None,
        prefill_len: int | None,
        ctx_lens: Sequence[int],
    ) -> float:
        """The part of the stage's FLOPs done by attention (score and context matmuls); the
        rest is done by GEMMs (docs/flops.md, "FLOPs by kernel category")."""
        ...


class TrafficModel(Protocol):
    """Bytes each stage moves (flops/traffic.py), the roofline's denominator; None: unknown."""

    def vision_bytes_moved(self, mode: str, crop_grid: tuple[int, int] | None) -> float | None:
        """Bytes the vision stage of one image moves."""
        ...

    def prefill_bytes_moved(self, prefill_len: int) -> float | None:
        """Bytes the prefill forward over `prefill_len` positions moves."""
        ...

    def decode_bytes_moved(self, ctx_lens: Sequence[int]) -> float | None:
        """Bytes decode steps attending to `ctx_lens` positions each move."""
        ...


@dataclass(frozen=True)
class AnalyticFlops:
    """`FlopsModel` and `TrafficModel` over `analytic` and `traffic` (causal attention)."""

    config: ModelConfig
    bytes_dtype: str | None
    lm_head_positions: LmHeadPositions = "last"

    @property
    def window(self) -> int:
        return self.config.text.max_position_embeddings

    def _vision(self, mode: str, crop_grid: tuple[int, int] | None) -> analytic.Flops:
        layout = analytic.image_layout(self.config, mode, crop_grid)
        return analytic.vision_flops(self.config, layout)

    def _prefill(self, prefill_len: int) -> analytic.Flops:
        text, positions = self.config.text, self.lm_head_positions
        return analytic.prefill_flops(text, prefill_len, "causal", positions)

    def _decode(self, ctx_lens: Sequence[int]) -> analytic.Flops:
        text = self.config.text
        return analytic.total(
            analytic.decode_flops_per_token(text, c).times(n) for c, n in Counter(ctx_lens).items()
        )

    def vision_flops(self, mode: str, crop_grid: tuple[int, int] | None) -> float:
        return float(self._vision(mode, crop_grid).total_flops)

    def prefill_flops(self, prefill_len: int) -> float:
        return float(self._prefill(prefill_len).total_flops)

    def decode_flops(self, ctx_lens: Sequence[int]) -> float:
        return float(self._decode(ctx_lens).total_flops)

    def attention_flops(
        self,
        stage: str,
        mode: str,
        crop_grid: tuple[int, int] | None,
        prefill_len: int | None,
        ctx_lens: Sequence[int],
    ) -> float:
        if stage == "vision":
            return float(self._vision(mode, crop_grid).attention_flops)
        if stage == "prefill":
            assert prefill_len is not None
            return float(self._prefill(prefill_len).attention_flops)
        return float(self._decode(ctx_lens).attention_flops)

    def decode_bytes(self, ctx_lens: Sequence[int]) -> float | None:
        if self.bytes_dtype is None:
            return None
        text, dtype = self.config.text, self.bytes_dtype
        return float(
            sum(
                n * sum(analytic.decode_bytes_per_step(text, c, dtype).values())
                for c, n in Counter(ctx_lens).items()
            )
        )

    def vision_bytes_moved(self, mode: str, crop_grid: tuple[int, int] | None) -> float | None:
        if self.bytes_dtype is None:
            return None
        layout = analytic.image_layout(self.config, mode, crop_grid)
        moved = traffic.vision_bytes(self.config, layout, self.bytes_dtype)
        return float(sum(moved.values()))

    def prefill_bytes_moved(self, prefill_len: int) -> float | None:
        if self.bytes_dtype is None:
            return None
        moved = traffic.decoder_bytes(self.config.text, prefill_len, prefill_len,
                                      self.bytes_dtype)  # fmt: skip
        return float(sum(moved.values()))

    def decode_bytes_moved(self, ctx_lens: Sequence[int]) -> float | None:
        if self.bytes_dtype is None:
            return None
        text, dtype = self.config.text, self.bytes_dtype
        return float(
            sum(
                n * sum(traffic.decoder_bytes(text, 1, c, dtype).values())
                for c, n in Counter(ctx_lens).items()
            )
        )


@dataclass(frozen=True)
class StageWork:
    """What the model says one stage instance computes and moves (decode: also reads)."""

    flops: float
    decode_bytes: float | None = None
    decode_steps: int | None = None
    bytes_moved: float | None = None
    # the part of `flops` attention kernels do (the rest: GEMMs)
    attention_flops: float = 0.0


def stage_work(
    stage: str,
    flops_model: FlopsModel,
    traffic_model: TrafficModel | None,
    *,
    mode: str,
    crop_grid: tuple[int, int] | None,
    prefill_len: int | None,
    ctx_lens: Sequence[int] = (),
) -> StageWork:
    """The FLOPs (and bytes) of one instance of `stage`; decode steps attend to `ctx_lens`.

    Raises:
        MissingInputError: prefill without its length.
    """
    if stage == "decode":
        return StageWork(
            flops_model.decode_flops(ctx_lens) if ctx_lens else 0.0,
            flops_model.decode_bytes(ctx_lens) if ctx_lens else 0.0,
            len(ctx_lens),
            traffic_model.decode_bytes_moved(ctx_lens) if traffic_model and ctx_lens else None,
            flops_model.attention_flops(stage, mode, crop_grid, None, ctx_lens)
            if ctx_lens
            else 0.0,
        )
    if stage == "vision":
        flops = flops_model.vision_flops(mode, crop_grid)
        moved = traffic_model.vision_bytes_moved(mode, crop_grid) if traffic_model else None
        attention = flops_model.attention_flops(stage, mode, crop_grid, None, ())
        return StageWork(flops, bytes_moved=moved, attention_flops=attention)
    if prefill_len is None:
        raise MissingInputError(
            "prefill FLOPs need the prefill length Lp (image positions + text tokens): "
            "pass --prefill-len N"
        )
    flops = flops_model.prefill_flops(prefill_len)
    moved = traffic_model.prefill_bytes_moved(prefill_len) if traffic_model else None
    attention = flops_model.attention_flops(stage, mode, crop_grid, prefill_len, ())
    return StageWork(flops, bytes_moved=moved, attention_flops=attention)


def resolve_config(
    *,
    model: str | None,
    config_path: str | None,
    meta: RunMeta | None,
    warnings: list[str],
) -> tuple[ModelConfig, str]:
    """The architecture FLOPs are counted on, and where it came from.

    Order: `--config FILE`, `--model NAME`, the run metadata's `model.config` (or its family's
    built-in config when that does not parse).

    Raises:
        MissingInputError: none of them is available.
        ConfigError: the given file or name is invalid.
    """
    if config_path is not None:
        return load_config_json(config_path), f"--config {config_path}"
    if model is not None:
        if meta is not None and meta.family != model:
            warnings.append(f"--model {model} overrides the run's model family {meta.family}")
        return builtin_config(model), f"--model {model} (built-in config)"
    if meta is None:
        raise MissingInputError(
            "FLOPs need the model architecture and the trace has no run metadata: pass "
            f"--model {'|'.join(FAMILIES)}, --config FILE or --meta run.meta.json"
        )
    if meta.model_config is not None:
        try:
            return config_from_json_dict(dict(meta.model_config), "run metadata model.config"), (
                "run metadata model.config"
            )
        except ConfigError as exc:
            warnings.append(f"run metadata model.config unreadable ({exc}); used the built-in")
    tiny = " tiny" if meta.tiny else ""
    return builtin_config(meta.family, tiny=meta.tiny), f"built-in {meta.family}{tiny} config"
