"""DeepSeek-OCR image preprocessing and image-token layout (PIL + numpy, no torch).

Mirrors the reference code so the traced runs see the real tensor shapes:
- v1 (`modeling_deepseekocr.py`, `infer`): tiny/small resize the image to a square; base/large
  pad it (aspect kept, grey 127 background); gundam pads a global view and, when the image is
  larger than one crop, resizes it onto a w×h grid of crops chosen by `dynamic_preprocess`.
- OCR-2 (`DeepseekOcr2ImageProcessorPil`): global view scaled to fit and padded to a square;
  crops (gundam) only when max(w, h) exceeds the crop size, grid by `get_optimal_tiled_canvas`.
Pixel values are normalised with mean = std = 0.5 in both. The token geometry of the result is
`flops.analytic.image_layout`, the one statement of the image-token layout.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from llm_perf_opt.errors import ConfigError, LlmPerfOptError
from llm_perf_opt.flops.analytic import ImageLayout, image_layout
from llm_perf_opt.flops.configs import ModelConfig, ModeSpec

PIXEL_MEAN: Final = 0.5
PIXEL_STD: Final = 0.5
PAD_GREY: Final = (127, 127, 127)  # int(0.5 * 255) per channel, as both reference codes pad
DEFAULT_PAGE_SIZE: Final = (1000, 1414)  # A4 aspect: gundam picks a 2×3 crop grid in both models

FloatArray = npt.NDArray[np.float32]


class ImageInputError(LlmPerfOptError):
    """An input image is missing or cannot be decoded."""


@dataclass(frozen=True)
class PreprocessedImage:
    """Normalised pixel arrays of one image, channels first, float32.

    Attributes:
        global_view: (3, S, S) global view.
        crops: (n, 3, T, T) local crops in row-major order, or None.
        layout: token geometry.
    """

    global_view: FloatArray
    crops: FloatArray | None
    layout: ImageLayout


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, applying its EXIF orientation like the reference code.

    Raises:
        ImageInputError: the file does not exist or is not a readable image.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageInputError(f"image {p} does not exist; pass an existing image file")
    try:
        with Image.open(p) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageInputError(
            f"image {p} cannot be read as an image ({exc}); pass a PNG or JPEG file"
        ) from None


def synthetic_page(index: int, size: tuple[int, int] = DEFAULT_PAGE_SIZE) -> Image.Image:
    """A deterministic document page: a title and paragraphs of pseudo-random words.

    Pages with different `index` differ in text; the same index always renders the same pixels
    with the same Pillow version (Pillow's built-in bitmap font, no font files needed).
    """
    width, height = size
    rng = random.Random(1000 + index)
    page = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default()
    margin = max(8, width // 16)
    line_px = max(12, height // 60)
    draw.text((margin, margin), f"Synthetic page {index + 1}: stage profiling", fill=0, font=font)
    chars_per_line = max(8, (width - 2 * margin) // 7)
    y = margin + 3 * line_px
    while y < height - margin - line_px:
        if rng.random() < 0.12:
            y += line_px  # paragraph break
            continue
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < chars_per_line - 10:
            words.append("".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 9))))
        draw.text((margin, y), " ".join(words), fill=(20, 20, 20), font=font)
        y += line_px
    return page


_LETTERS: Final = "abcdefghijklmnopqrstuvwxyz"


def select_crop_grid(
    width: int,
    height: int,
    crop_size: int,
    min_crops: int,
    max_crops: int,
    *,
    v1_order: bool = False,
) -> tuple[int, int]:
    """Crop grid (columns, rows) with the aspect ratio closest to the image's.

    Same rule in v1's `find_closest_aspect_ratio` and OCR-2's `get_optimal_tiled_canvas`: grids
    with min ≤ w·h ≤ max sorted by w·h; on a tie of the ratio difference the later grid wins while
    the image area exceeds half its area. Only the order of equal-size grids differs: OCR-2 lists
    them width-major, v1 sorts a Python set (`v1_order=True` rebuilds that set the same way, whose
    iteration order is fixed for small int tuples), which matters on exact ties such as 1000×800.
    """
    candidates = (
        (w, h)
        for n in range(min_crops, max_crops + 1)
        for w in range(1, n + 1)
        for h in range(1, n + 1)
        if min_crops <= w * h <= max_crops
    )
    ordered = set(candidates) if v1_order else dict.fromkeys(sorted(candidates))
    grids = sorted(ordered, key=lambda g: g[0] * g[1])
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for grid in grids:
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and area > 0.5 * crop_size * crop_size * grid[0] * grid[1]:
            best = grid
    return best


def preprocess(
    config: ModelConfig,
    image: Image.Image,
    mode: str,
    crops: tuple[int, int] | None = None,
) -> PreprocessedImage:
    """Apply the family's preprocessing for `mode` to an RGB image.

    Args:
        config: the model config (its modes and SAM geometry set the token layout).
        image: the input image.
        mode: tiny, small, base, large or gundam (must be one of `config.modes`).
        crops: force this (columns, rows) crop grid (gundam only) instead of choosing one.

    Raises:
        ConfigError: unknown mode, or `crops` given for a mode without crops or out of range.
    """
    spec = config.mode(mode)
    image = image.convert("RGB")
    grid = _crop_grid(image, spec, crops, v1_order=config.family == "deepseek-ocr")
    size = spec.image_size
    if spec.resize:
        global_img = image.resize((size, size), Image.Resampling.BICUBIC)
    elif config.family == "deepseek-ocr":
        global_img = ImageOps.pad(image, (size, size), color=PAD_GREY)
    else:
        global_img = _fit_and_pad(image, size)
    tiles = None
    if grid is not None and spec.crop_size is not None:
        tiles = np.stack([_normalize(t) for t in _cut_crops(image, grid, spec.crop_size)])
    layout = image_layout(config, mode, grid)
    return PreprocessedImage(_normalize(global_img), tiles, layout)


def _crop_grid(
    image: Image.Image, spec: ModeSpec, forced: tuple[int, int] | None, *, v1_order: bool
) -> tuple[int, int] | None:
    """The crop grid of `image` in `spec`, or None when the mode or image size gives no crops."""
    if spec.crop_size is None:
        if forced is not None:
            raise ConfigError(
                f"--crops applies only to a mode with crops (gundam), not {spec.name!r}"
            )
        return None
    if forced is not None:
        if not spec.min_crops <= forced[0] * forced[1] <= spec.max_crops:
            raise ConfigError(
                f"crop grid {forced[0]}x{forced[1]} has {forced[0] * forced[1]} crops; this "
                f"model's {spec.name} mode takes {spec.min_crops} to {spec.max_crops}"
            )
        return forced
    width, height = image.size
    if max(width, height) <= spec.crop_size:
        return None  # both reference codes skip crops for images that fit one crop
    return select_crop_grid(
        width, height, spec.crop_size, spec.min_crops, spec.max_crops, v1_order=v1_order
    )


def _cut_crops(image: Image.Image, grid: tuple[int, int], crop_px: int) -> list[Image.Image]:
    """Resize onto the grid canvas and cut it into crops, row by row."""
    cols, rows = grid
    canvas = image.resize((crop_px * cols, crop_px * rows), Image.Resampling.BICUBIC)
    return [
        canvas.crop((c * crop_px, r * crop_px, (c + 1) * crop_px, (r + 1) * crop_px))
        for r in range(rows)
        for c in range(cols)
    ]


def _fit_and_pad(image: Image.Image, size: int) -> Image.Image:
    """OCR-2's global view: scale the long side to `size`, centre on a grey square."""
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    square = Image.new("RGB", (size, size), PAD_GREY)
    square.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return square


def _normalize(image: Image.Image) -> FloatArray:
    """HWC uint8 → CHW float32 in [-1, 1] (ToTensor, then Normalize(0.5, 0.5))."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return np.ascontiguousarray(((pixels - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1))
