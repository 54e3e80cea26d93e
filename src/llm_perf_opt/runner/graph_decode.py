"""Decode through a static KV cache and a CUDA graph captured once, as serving engines do.

The prefill stays the eager forward (the same kernels as without graphs); its KV cache is then
copied into a transformers `StaticCache` of `max_cache_len` positions. Every decode step attends
over the whole static cache with an additive mask of the filled positions, computed inside the step
from a position buffer, so all steps have the same shapes and tensor addresses. On CUDA the step
(embedding, decoder, lm_head, argmax) is captured once into a `torch.cuda.CUDAGraph` and replayed;
on CPU, where capture is impossible, the same static step runs eagerly, which lets tests compare
its tokens with the dynamic-cache path.

transformers' eager MoE expert loop reads `torch.nonzero` on the host, which a capture forbids;
`RunSettings` refuses that combination before any model is built (`GRAPHABLE_EXPERTS`).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Final

import torch
from transformers import StaticCache

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.runner.models import BuiltModel

CAPTURE_WARMUP_STEPS: Final = 3  # side-stream runs before capture (cuBLAS workspaces, autotune)


class StaticDecoder:
    """Greedy decode steps over a `StaticCache`, replayed from one CUDA graph when `capture`.

    Use: `start(past, prefill_len)` after each prefill, `capture_once()` before the first step
    (a no-op once captured or without `capture`), then `step(token, position)` per token.
    """

    def __init__(self, built: BuiltModel, max_cache_len: int, *, capture: bool) -> None:
        text = built.config.text
        device, dtype = built.device, built.dtype
        self.built = built
        self.max_cache_len = max_cache_len
        self.capture = capture and device.type == "cuda"
        self.captures = 0
        self.capture_s = 0.0
        self._prefill_len = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._next_token: torch.Tensor | None = None
        with torch.inference_mode():
            self.cache = StaticCache(config=built.model.config, max_cache_len=max_cache_len)
            self.cache.early_initialization(
                batch_size=1,
                num_heads=text.num_kv_heads,
                head_dim=text.head_dim,
                dtype=dtype,
                device=device,
            )
            self._layers: list[Any] = list(self.cache.layers)  # StaticLayer: keys, values, length
            self._ids = torch.zeros((1, 1), dtype=torch.long, device=device)
            self._positions = torch.zeros((1, 1), dtype=torch.long, device=device)
            self._key_positions = torch.arange(max_cache_len, device=device).view(1, 1, 1, -1)
            self._blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=device)

    @property
    def replayed(self) -> bool:
        """Steps run as graph replays (False: the static step runs eagerly)."""
        return self._graph is not None

    @torch.inference_mode()
    def start(self, past: Any, prefill_len: int) -> None:
        """Copy the prefill's dynamic KV cache into the static one and point it at `prefill_len`.

        Raises:
            ConfigError: the prompt leaves no room for a decode step in the static cache.
        """
        if prefill_len >= self.max_cache_len:
            raise ConfigError(
                f"prefill_len {prefill_len} fills the static cache of {self.max_cache_len} "
                "positions; size it as the longest prompt plus max_new_tokens"
            )
        for static, dynamic in zip(self._layers, past.layers, strict=True):
            static.keys[:, :, :prefill_len].copy_(dynamic.keys)
            static.values[:, :, :prefill_len].copy_(dynamic.values)
        self._prefill_len = prefill_len
        self._rewind()

    @torch.inference_mode()
    def capture_once(self) -> bool:
        """Capture the decode step (CUDA, first call only); True if it captured now.

        The side-stream warm-up steps write the KV slot at `prefill_len` and advance the cache;
        it is rewound afterwards, and that slot is overwritten by the first real step.
        """
        if not self.capture or self._graph is not None:
            return False
        start = perf_counter()
        stream = torch.cuda.Stream(self.built.device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(self.built.device))
        with torch.cuda.stream(stream):
            for _ in range(CAPTURE_WARMUP_STEPS):
                self._forward()
        torch.cuda.current_stream(self.built.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._next_token = self._forward()
        self._graph = graph
        self._rewind()
        torch.cuda.synchronize(self.built.device)
        self.captures += 1
        self.capture_s += perf_counter() - start
        return True

    @torch.inference_mode()
    def step(self, token: int, position: int) -> int:
        """Feed `token` at 0-based `position` (keys 0..position visible); greedy next token."""
        self._ids.fill_(token)
        self._positions.fill_(position)
        if self._graph is None:
            return int(self._forward())
        self._graph.replay()
        assert self._next_token is not None
        return int(self._next_token)

    def _forward(self) -> torch.Tensor:
        """One decode forward on the static buffers; the argmax stays on the device."""
        visible = self._key_positions <= self._positions.view(1, 1, 1, 1)
        mask = torch.where(visible, 0.0, self._blocked)
        out = self.built.model(
            input_ids=self._ids,
            position_ids=self._positions,
            past_key_values=self.cache,
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1,
        )
        token: torch.Tensor = out.logits[0, -1].argmax()
        return token

    def _rewind(self) -> None:
        for layer in self._layers:
            layer.cumulative_length.fill_(self._prefill_len)
