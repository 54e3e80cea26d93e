"""Prefill and greedy decode of a transformers causal LM built from a config.json, random weights.

Annotated the way users annotate their own loops: plain `torch.cuda.nvtx` ranges `prefill`, then
`decode` holding one `decode_step` per token (default domain, no run metadata). Example:
    nsys profile -t cuda,nvtx -o llama python scripts/trace_hf_decoder.py \
        traces/meta/llama_1b_shape.config.json --prefill-len 512 --decode-steps 16
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("config", help="a Hugging Face config.json")
parser.add_argument("--prefill-len", type=int, default=512)
parser.add_argument("--decode-steps", type=int, default=16)
parser.add_argument("--warmup-steps", type=int, default=4, help="unannotated steps first")
parser.add_argument(
    "--attn-implementation", default="sdpa", help="transformers attention backend (sdpa, eager)"
)
parser.add_argument(
    "--compile",
    action="store_true",
    help="torch.compile the forward (inductor: Triton fusions); compiled during the warmup steps",
)
args = parser.parse_args()

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
config = AutoConfig.from_pretrained(args.config)
torch.manual_seed(0)
with torch.device(device):
    model = AutoModelForCausalLM.from_config(
        config, dtype=dtype, attn_implementation=args.attn_implementation
    ).eval()
if args.compile:
    # dynamic shapes: one graph for the growing KV cache instead of one per decode step
    model.forward = torch.compile(model.forward, dynamic=True)  # type: ignore[method-assign]
prompt = torch.randint(0, config.vocab_size, (1, args.prefill_len), device=device)


@torch.inference_mode()
def generate(steps: int, annotate: bool) -> list[int]:
    push = torch.cuda.nvtx.range_push if annotate and device == "cuda" else (lambda _: None)
    pop = torch.cuda.nvtx.range_pop if annotate and device == "cuda" else (lambda: None)
    push("prefill")
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    tokens = [int(token)]
    pop()
    push("decode")
    for _ in range(steps):
        push("decode_step")
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        tokens.append(int(token))
        pop()
    pop()
    return tokens


generate(args.warmup_steps, annotate=False)
print(
    f"{config.model_type} on {device} ({dtype}), prefill {args.prefill_len}:",
    generate(args.decode_steps, annotate=True),
)
