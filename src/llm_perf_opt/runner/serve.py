"""The serving loop (`--serve`): requests run as an engine runs them, one NVTX range per step.

Each step of the `schedule.Scheduler` is one range named in vLLM's format, holding vLLM's scopes
(`vocab.SERVE_SCOPES`):

    execute_context_{n}({tokens})_generation_{m}({tokens})
      gpu_model_runner: preprocess    vision encoder of requests in their first context step,
                                      token embeddings, image rows placed, positions
      gpu_model_runner: forward       ONE decoder forward over every scheduled token, packed
      gpu_model_runner: postprocess   lm_head on each scheduled request's last token
      gpu_model_runner: sample        greedy argmax, tokens back to the host

Batching: the tokens of all scheduled requests — prompt chunks and one token per generating
request — are packed into one sequence, so every linear layer (projections, MLP / experts,
norms) runs once per step over all of them, as in vLLM. Attention runs per request (one SDPA
call per request and layer, a custom transformers attention function) over that request's own
preallocated KV cache: query i of a chunk after c cached tokens sees c + i keys (causal,
bottom-right aligned), so no padding and no cross-request keys are computed. vLLM does the same
attention in one variable-length kernel per layer; here it is a short loop of kernels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM
from transformers.initialization import no_init_weights

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops.hf import DECODER_TYPES, GqaAttention, hf_model_from_dict
from llm_perf_opt.inputs.user_files import load_config_file
from llm_perf_opt.runner.models import BuiltModel, random_init
from llm_perf_opt.runner.nvtx_marks import Annotator
from llm_perf_opt.runner.nvtx_stages import PreparedImage, vision_stage
from llm_perf_opt.runner.schedule import Entry, Request, Scheduler, step_name
from llm_perf_opt.vocab import SERVE_SCOPES

SERVE_ATTENTION: Final = "llm_perf_opt_serve"
# Decoder families whose attention is plain scaled-dot-product over full causal context (no
# soft-capping or custom scaling), so the per-request attention function reproduces them.
SERVE_DECODER_TYPES: Final = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
)
PREPROCESS, FORWARD, POSTPROCESS, SAMPLE = SERVE_SCOPES


@dataclass
class KvCache:
    """One request's keys and values, all layers, preallocated for its whole life:
    (2, layers, 1, kv_heads, positions, head_dim)."""

    data: torch.Tensor


@dataclass(frozen=True)
class _Seq:
    cache: KvCache
    start: int
    query_len: int
    context_len: int


@dataclass(frozen=True)
class PackedBatch:
    """The scheduled requests of one forward, in packing order (passed to the attention)."""

    seqs: tuple[_Seq, ...]


def serve_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of packed requests (transformers' attention-function signature).

    `query` (1, heads, T, d), `key`/`value` (1, kv_heads, T, d) hold the step's T packed tokens
    (RoPE applied); `kwargs["serve_batch"]` says which request owns which tokens. Each request's
    new keys and values are written into its cache, then its queries attend to its cached
    context plus its own tokens. Returns (1, T, heads, d).
    """
    batch: PackedBatch = kwargs["serve_batch"]
    layer = int(module.layer_idx)  # type: ignore[arg-type]
    gqa = query.shape[1] != key.shape[1]
    outs = []
    for seq in batch.seqs:
        lo, hi = seq.start, seq.start + seq.query_len
        end = seq.context_len + seq.query_len
        keys, values = seq.cache.data[0, layer], seq.cache.data[1, layer]
        keys[:, :, seq.context_len : end].copy_(key[:, :, lo:hi])
        values[:, :, seq.context_len : end].copy_(value[:, :, lo:hi])
        chunk_after_context = seq.query_len > 1 and seq.context_len > 0
        out = F.scaled_dot_product_attention(
            query[:, :, lo:hi],
            keys[:, :, :end],
            values[:, :, :end],
            attn_mask=_lower_right(seq.query_len, end, query.device)
            if chunk_after_context
            else None,
            is_causal=seq.query_len > 1 and not chunk_after_context,
            scale=scaling,
            enable_gqa=gqa,
        )
        outs.append(out)
    return torch.cat(outs, dim=2).transpose(1, 2), None


def _lower_right(queries: int, keys: int, device: torch.device) -> Any:
    """The causal mask of a chunk after cached keys: query i sees the first keys - queries + i + 1.

    On CUDA torch's `causal_lower_right` bias, which SDPA runs as a flash (GQA included) or
    memory-efficient kernel without building the mask; elsewhere the boolean mask itself.
    """
    if device.type == "cuda":
        return causal_lower_right(queries, keys)
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)


AttentionInterface.register(SERVE_ATTENTION, serve_attention)


@dataclass
class ServeTarget:
    """What the loop drives: a decoder, its embedding and head, and how to encode an image.

    Attributes:
        decoder: the text model (`inputs_embeds`, `position_ids` → `last_hidden_state`).
        embed: the token embedding.
        lm_head: the output projection.
        prompts: each request's prompt ids on the host.
        image_slots: per request, the [start, end) prompt positions of its image rows, or None.
        encode: per request with an image, the vision encoder → (image rows, hidden).
    """

    decoder: Any
    embed: nn.Module
    lm_head: nn.Module
    prompts: list[list[int]]
    image_slots: list[tuple[int, int] | None]
    encode: dict[int, Callable[[], torch.Tensor]] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        device: torch.device = next(self.lm_head.parameters()).device
        return device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        dtype: torch.dtype = next(self.lm_head.parameters()).dtype
        return dtype


def use_serve_attention(decoder: Any) -> None:
    """Route the decoder's attention (only the decoder's: vision towers keep theirs) through
    `serve_attention`; no mask is built for it (transformers skips masks of unknown kinds)."""
    decoder.config._attn_implementation = SERVE_ATTENTION


@dataclass
class StepRecord:
    """One executed step: its entries, synchronized wall seconds and sampled tokens."""

    index: int
    name: str
    entries: tuple[Entry, ...]
    wall_s: float
    tokens: tuple[int, ...]


class Engine:
    """Runs scheduled steps on a `ServeTarget` (see the module docstring)."""

    def __init__(self, target: ServeTarget, sync: Callable[[], None]) -> None:
        self.target = target
        self.sync = sync
        cfg = target.decoder.config
        self.layers = int(cfg.num_hidden_layers)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(
            getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        )
        self.caches: dict[int, KvCache] = {}
        self.encoded: dict[int, torch.Tensor] = {}
        self.last_token: dict[int, int] = {}

    @torch.inference_mode()
    def step(
        self,
        index: int,
        entries: tuple[Entry, ...],
        requests: dict[int, Request],
        annotator: Annotator,
    ) -> StepRecord:
        """Run one step inside its named range; the wall time spans synchronizations."""
        name = step_name(entries)
        self.sync()
        start = perf_counter()
        with annotator.range(name):
            with annotator.range(PREPROCESS):
                embeds, positions, seqs, last = self._inputs(entries, requests)
            with annotator.range(FORWARD):
                hidden = self.target.decoder(
                    inputs_embeds=embeds,
                    position_ids=positions,
                    use_cache=False,
                    serve_batch=PackedBatch(seqs),
                ).last_hidden_state
            with annotator.range(POSTPROCESS):
                logits = self.target.lm_head(hidden[0, last])
            with annotator.range(SAMPLE):
                tokens = tuple(int(t) for t in logits.argmax(-1).tolist())
            self.sync()
        wall = perf_counter() - start
        for entry, token in zip(entries, tokens, strict=True):
            self.last_token[entry.request] = token
        return StepRecord(index, name, entries, wall, tokens)

    def release(self, request: int) -> None:
        """Free a finished request's cache and encoder output."""
        self.caches.pop(request, None)
        self.encoded.pop(request, None)

    def _inputs(
        self, entries: tuple[Entry, ...], requests: dict[int, Request]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[_Seq, ...], torch.Tensor]:
        target, device = self.target, self.target.device
        ids: list[int] = []
        positions: list[int] = []
        seqs: list[_Seq] = []
        image_rows: list[tuple[int, int, int, int]] = []  # packed start, request, row lo, hi
        for entry in entries:
            rid, q, c = entry.request, entry.query_len, entry.context_len
            if entry.encoder_images:
                self.encoded[rid] = target.encode[rid]()
            if rid not in self.caches:
                length = requests[rid].prompt_len + requests[rid].max_new_tokens
                shape = (2, self.layers, 1, self.kv_heads, length, self.head_dim)
                data = torch.empty(shape, dtype=target.dtype, device=device)
                self.caches[rid] = KvCache(data)
            start = len(ids)
            if entry.phase == "context":
                ids.extend(target.prompts[rid][c : c + q])
                slots = target.image_slots[rid]
                if slots is not None:
                    lo, hi = max(c, slots[0]), min(c + q, slots[1])
                    if lo < hi:
                        image_rows.append((start + lo - c, rid, lo - slots[0], hi - slots[0]))
            else:
                ids.append(self.last_token[rid])
            positions.extend(range(c, c + q))
            seqs.append(_Seq(self.caches[rid], start, q, c))
        embeds = target.embed(torch.tensor([ids], dtype=torch.long, device=device))
        for at, rid, lo, hi in image_rows:
            embeds[0, at : at + hi - lo] = self.encoded[rid][lo:hi].to(embeds.dtype)
        pos = torch.tensor([positions], dtype=torch.long, device=device)
        last = torch.tensor([s.start + s.query_len - 1 for s in seqs], device=device)
        return embeds, pos, tuple(seqs), last


def run_schedule(engine: Engine, scheduler: Scheduler, annotator: Annotator) -> list[StepRecord]:
    """Step until every request finished; caches are freed as requests leave."""
    records = []
    while not scheduler.done:
        entries = scheduler.next_step()
        records.append(engine.step(scheduler.step_index, entries, scheduler.arrived, annotator))
        before = set(scheduler.generated)
        scheduler.finish_step(entries)
        for rid in set(scheduler.generated) - before:
            engine.release(rid)
    return records


# --- targets -------------------------------------------------------------------------------------


def ocr_target(built: BuiltModel, pages: list[PreparedImage]) -> ServeTarget:
    """Request i is page i: its prompt (BOS, image rows, instruction) and its vision encoder."""
    base = built.model.model
    prompts = [[int(t) for t in p.input_ids[0].tolist()] for p in pages]
    slots: list[tuple[int, int] | None] = []
    for prompt in prompts:
        where = [i for i, t in enumerate(prompt) if t == built.image_token_id]
        if where != list(range(where[0], where[-1] + 1)):
            raise ConfigError("image rows must be contiguous in the prompt")
        slots.append((where[0], where[-1] + 1))
    encode = {i: _encoder(built, page) for i, page in enumerate(pages)}
    target = ServeTarget(
        base.language_model,
        built.model.get_input_embeddings(),
        built.model.lm_head,
        prompts,
        slots,
        encode,
    )
    use_serve_attention(target.decoder)
    return target


def _encoder(built: BuiltModel, page: PreparedImage) -> Callable[[], torch.Tensor]:
    return lambda: vision_stage(built, page)


@dataclass(frozen=True)
class BuiltDecoder:
    """A Hugging Face causal LM built from a config.json with random weights."""

    path: str
    config_json: dict[str, Any]
    model: Any

    @property
    def n_params(self) -> int:
        """Parameters instantiated (shared tensors once)."""
        return sum(p.numel() for p in self.model.parameters())


def build_decoder(
    path: str,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    experts_implementation: str = "eager",
) -> BuiltDecoder:
    """`AutoModelForCausalLM.from_config` of a decoder config.json, random weights from `seed`;
    a mixture-of-experts decoder runs its experts with `experts_implementation`.

    Raises:
        ConfigError: unreadable config, or a model type the serving loop does not run.
    """
    data = load_config_file(Path(path))
    if not isinstance(data, dict):
        raise ConfigError(f"decoder config {path} must hold a JSON object")
    spec = hf_model_from_dict(data, path).text
    model_type = data.get("model_type")
    if spec is None or model_type not in SERVE_DECODER_TYPES:
        others = sorted(set(DECODER_TYPES) - set(SERVE_DECODER_TYPES))
        raise ConfigError(
            f"decoder config {path} has model_type {model_type!r}; --serve runs "
            f"{', '.join(SERVE_DECODER_TYPES)} (not {', '.join(others)}: their attention is not "
            "plain SDPA)"
        )
    if not isinstance(spec.attention, GqaAttention) or any(
        layer.window is not None for layer in spec.layers
    ):
        raise ConfigError(
            f"decoder config {path} uses sliding-window attention; --serve needs full attention "
            "(set sliding_window to null)"
        )
    config = AutoConfig.from_pretrained(path)
    with torch.device(device), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    random_init(model, seed)
    if model._can_set_experts_implementation():
        model.set_experts_implementation(experts_implementation)
    model.tie_weights()
    model.eval()
    model.requires_grad_(False)
    return BuiltDecoder(path, json.loads(json.dumps(data)), model)


def text_target(built: BuiltDecoder, prompts: list[list[int]]) -> ServeTarget:
    """Text-only requests on a decoder: the given prompt ids, no image."""
    model = built.model
    target = ServeTarget(
        model.model, model.get_input_embeddings(), model.lm_head, prompts, [None] * len(prompts)
    )
    use_serve_attention(target.decoder)
    return target


def random_prompts(n: int, prompt_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    """n prompts of random token ids (deterministic in `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (n, prompt_len), generator=generator)
    return [[int(t) for t in row] for row in ids.tolist()]
