"""What the generated trace holds: the profiled process, its GPU, and how many kernels go where.

The sizes of a run (images, decode steps, kernels per stage) all derive from one number, the
kernel rows asked for; `plan_trace` splits it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

DOMAIN_ID = 1
CCCL_DOMAIN_ID = 2
PID = 41207
MAIN_TID = PID
BG_TID = PID + 37
GLOBAL_PID = (1 << 48) | (PID << 24)
MAIN_GTID = GLOBAL_PID | MAIN_TID
BG_GTID = GLOBAL_PID | BG_TID
MAIN_STREAM = 7
BG_STREAM = 14
SESSION_START_UTC_NS = 1_795_635_804_533_162_217
TRACE_START_NS = 5_000_000_000
GPU_NAME = "NVIDIA H100 80GB HBM3"
RANGE_COLOR = 255  # what the `nvtx` package stored for our ranges in a real capture
US = 1_000.0

# DeepSeek-OCR (v1) base mode: 1024 px, 256 vision tokens, 16 x (16 + 1) + 1 LLM positions.
IMAGE_SIDE_PX = 1024
VISION_TOKENS = 256
IMAGE_POSITIONS = 273
PROMPT_TEXT_TOKENS = 9  # BOS + the runner's 8 instruction ids
VOCAB_SIZE = 129_280
N_PARAMS = 3_336_106_240
WARMUP_ROUNDS = 1
WARMUP_NEW_TOKENS = 3
GRAPH_NODES = 3  # sampling kernels replayed from a CUDA graph in every decode step
FIXED_KERNELS = 10  # 3 before any range, 4 in the start/end `load_model` range, 3 at the end
BG_KERNELS_PER_IMAGE = 4  # 3 inside the second thread's range, 1 outside it
MAX_KERNELS_PER_STEP = 870  # eager MoE decode on the H100 (docs: ~870 kernels per token)
MIN_KERNELS_PER_STEP = 48  # enough for a layer's attention and two nonzero calls


@dataclass(frozen=True)
class TracePlan:
    """How many kernels go where; the sizes every other count derives from."""

    n_kernels: int
    kernels_per_step: int
    vision_kernels: int
    prefill_kernels: int
    n_images: int
    max_new_tokens: int
    extra_per_step: int
    extra_steps: int

    @property
    def decode_steps(self) -> int:
        """Decode steps per measured image (`max_new_tokens - 1`)."""
        return self.max_new_tokens - 1

    def step_kernels(self, measured_step: int) -> int:
        """Kernels in measured decode step number `measured_step` (counted over all images)."""
        extra = 1 if measured_step < self.extra_steps else 0
        return self.kernels_per_step + self.extra_per_step + extra


def plan_trace(n_kernels: int) -> TracePlan:
    """Split `n_kernels` into warmup, images, stages and decode steps (exact total).

    Raises:
        ValueError: `n_kernels` is too small to hold one warmup round and two images.
    """
    k = min(MAX_KERNELS_PER_STEP, max(MIN_KERNELS_PER_STEP, n_kernels // 60))
    vision = max(16, round(0.45 * k))
    prefill = k
    warmup = WARMUP_ROUNDS * (vision + prefill + (WARMUP_NEW_TOKENS - 1) * k)
    available = n_kernels - FIXED_KERNELS - warmup
    per_image_fixed = vision + prefill + BG_KERNELS_PER_IMAGE
    n_images = max(2, round(available / (per_image_fixed + 255 * k)))
    step_kernels = available - n_images * per_image_fixed
    steps_per_image = step_kernels // (n_images * k) if step_kernels > 0 else 0
    if steps_per_image < 1:
        minimum = FIXED_KERNELS + warmup + 2 * (per_image_fixed + k)
        raise ValueError(f"--kernels {n_kernels} is too small: use at least {minimum}")
    remainder = step_kernels - n_images * steps_per_image * k
    n_steps = n_images * steps_per_image
    return TracePlan(
        n_kernels=n_kernels,
        kernels_per_step=k,
        vision_kernels=vision,
        prefill_kernels=prefill,
        n_images=n_images,
        max_new_tokens=steps_per_image + 1,
        extra_per_step=remainder // n_steps,
        extra_steps=remainder % n_steps,
    )
