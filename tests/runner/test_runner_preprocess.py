"""Preprocessing and image-token layout against the reference code and the architecture facts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# The runner extra (`pip install -e ".[runner]"`) brings these; without it the module is skipped.
pytest.importorskip("PIL", reason="needs the runner extra: pip install -e '.[runner]'")
from PIL import Image

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.flops.analytic import image_layout
from llm_perf_opt.flops.configs import ModelConfig, builtin_config
from llm_perf_opt.runner.preprocess import (
    ImageInputError,
    load_image,
    preprocess,
    select_crop_grid,
    synthetic_page,
)

V1 = builtin_config("deepseek-ocr")
V2 = builtin_config("deepseek-ocr2")


def _reference_v1_grid(width: int, height: int) -> tuple[int, int]:
    """`dynamic_preprocess` + `find_closest_aspect_ratio` of modeling_deepseekocr.py (v1)."""
    target_ratios = {
        (i, j)
        for n in range(2, 10)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if 2 <= i * j <= 9
    }
    best_diff, best = float("inf"), (1, 1)
    for ratio in sorted(target_ratios, key=lambda x: x[0] * x[1]):
        diff = abs(width / height - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and width * height > 0.5 * 640 * 640 * ratio[0] * ratio[1]:
            best = ratio
    return best


def _reference_v2_grid(width: int, height: int) -> tuple[int, int]:
    """`get_optimal_tiled_canvas` of transformers' DeepseekOcr2ImageProcessorPil (2..6, 768)."""
    grids = sorted(
        [(w, h) for w in range(1, 7) for h in range(1, 7) if 2 <= w * h <= 6],
        key=lambda g: g[0] * g[1],
    )
    best_diff, best = float("inf"), (1, 1)
    for grid in grids:
        diff = abs(width / height - grid[0] / grid[1])
        if diff < best_diff:
            best_diff, best = diff, grid
        elif diff == best_diff and width * height > 0.5 * 768 * 768 * grid[0] * grid[1]:
            best = grid
    return best


# Sizes include exact ratio ties between equal-area grids (e.g. aspect 1.25 = midway 1:2 | 2:1
# is not a tie, but 2000×1000 vs 1:1 and 4:1 is) and both sides of the area tie-break.
SIZES = [(w, h) for w in (641, 800, 1000, 1280, 2000, 2600, 3999) for h in (500, 700, 1000, 1414)]
SIZES += [(2000, 1000), (4000, 2000), (1000, 3000), (3000, 1000), (1500, 1500), (900, 450)]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_crop_grid_matches_both_reference_rules(width: int, height: int) -> None:
    assert select_crop_grid(width, height, 640, 2, 9, v1_order=True) == _reference_v1_grid(
        width, height
    )
    assert select_crop_grid(width, height, 768, 2, 6) == _reference_v2_grid(width, height)


# dsocr-architecture.md, "Modes": vision tokens and LLM positions of v1.
@pytest.mark.parametrize(
    ("mode", "vision", "positions"),
    [("tiny", 64, 73), ("small", 100, 111), ("base", 256, 273), ("large", 400, 421)],
)
def test_v1_single_view_layout_matches_the_mode_table(
    mode: str, vision: int, positions: int
) -> None:
    layout = preprocess(V1, synthetic_page(0), mode).layout
    assert (layout.vision_tokens, layout.image_positions, layout.crop_grid) == (
        vision,
        positions,
        None,
    )


@pytest.mark.parametrize("grid", [(2, 1), (1, 2), (2, 3), (3, 3), (1, 9), (4, 2)])
def test_v1_gundam_layout_matches_the_formula(grid: tuple[int, int]) -> None:
    w, h = grid
    pre = preprocess(V1, synthetic_page(0), "gundam", crops=grid)
    assert pre.layout.vision_tokens == 256 + 100 * w * h
    assert pre.layout.image_positions == 272 + 10 * h * (10 * w + 1) + 1
    assert pre.crops is not None and pre.crops.shape == (w * h, 3, 640, 640)
    assert pre.global_view.shape == (3, 1024, 1024)


@pytest.mark.parametrize("grid", [None, (2, 1), (2, 3), (1, 6)])
def test_ocr2_layout_is_256_plus_144_per_crop_plus_separator(grid: tuple[int, int] | None) -> None:
    mode = "base" if grid is None else "gundam"
    pre = preprocess(V2, synthetic_page(0), mode, crops=grid)
    n = 0 if grid is None else grid[0] * grid[1]
    assert pre.layout.vision_tokens == 256 + 144 * n
    assert pre.layout.image_positions == 256 + 144 * n + 1
    if grid is not None:
        assert pre.crops is not None and pre.crops.shape == (n, 3, 768, 768)


def test_gundam_skips_crops_for_images_within_one_crop() -> None:
    for config, side in ((V1, 640), (V2, 768)):
        pre = preprocess(config, Image.new("RGB", (side, side // 2), "white"), "gundam")
        assert pre.crops is None and pre.layout.crop_grid is None
        bigger = preprocess(config, Image.new("RGB", (side + 1, side // 2), "white"), "gundam")
        assert bigger.layout.crop_grid is not None


def test_a4_page_gets_a_two_by_three_grid_in_both_models() -> None:
    page = synthetic_page(0)
    assert page.size == (1000, 1414)
    assert preprocess(V1, page, "gundam").layout.crop_grid == (2, 3)
    assert preprocess(V2, page, "gundam").layout.crop_grid == (2, 3)


GREY = (127 / 255 - 0.5) / 0.5  # the pad colour after Normalize(0.5, 0.5)


@pytest.mark.parametrize("config", [V1, V2], ids=["v1", "ocr2"])
def test_padded_modes_keep_the_aspect_and_pad_grey(config: ModelConfig) -> None:
    wide = Image.new("RGB", (2000, 1000), "white")
    view = preprocess(config, wide, "base").global_view
    # 2:1 image in a 1024 square: 512 rows of image centred, 256 grey rows above and below
    assert np.allclose(view[:, :250, :], GREY)
    assert np.allclose(view[:, -250:, :], GREY)
    assert np.allclose(view[:, 300:700, :], 1.0)


def test_v1_tiny_and_small_resize_without_padding() -> None:
    wide = Image.new("RGB", (2000, 1000), "white")
    for mode, side in (("tiny", 512), ("small", 640)):
        view = preprocess(V1, wide, mode).global_view
        assert view.shape == (3, side, side)
        assert np.allclose(view, 1.0)


def test_crops_are_cut_row_major_from_the_resized_canvas() -> None:
    # left half black, right half white, 2×1 grid: crop 0 black, crop 1 white
    image = Image.new("RGB", (2000, 600), "white")
    image.paste((0, 0, 0), (0, 0, 1000, 600))
    crops = preprocess(V1, image, "gundam", crops=(2, 1)).crops
    assert crops is not None
    # bicubic resampling blurs a few columns at the seam; compare the interiors
    assert np.allclose(crops[0][:, :, :620], -1.0) and np.allclose(crops[1][:, :, 20:], 1.0)


def test_bad_modes_and_grids_are_config_errors() -> None:
    page = synthetic_page(0)
    with pytest.raises(ConfigError, match="huge"):
        preprocess(V1, page, "huge")
    with pytest.raises(ConfigError, match="not available for deepseek-ocr2"):
        preprocess(V2, page, "tiny")
    with pytest.raises(ConfigError, match="gundam"):
        preprocess(V1, page, "base", crops=(2, 2))
    with pytest.raises(ConfigError, match="2 to 9"):
        preprocess(V1, page, "gundam", crops=(5, 2))
    with pytest.raises(ConfigError, match="2 to 6"):
        preprocess(V2, page, "gundam", crops=(1, 1))


def test_layout_of_tiny_configs_follows_their_smaller_geometry() -> None:
    tiny = builtin_config("deepseek-ocr", tiny=True)
    layout = preprocess(tiny, synthetic_page(0), "base").layout
    assert layout == image_layout(tiny, "base")
    grid = tiny.sam.output_grid(tiny.mode("base").image_size)
    assert layout.image_positions == grid * (grid + 1) + 1


def test_synthetic_pages_are_deterministic_and_differ_by_index() -> None:
    first = synthetic_page(0).tobytes()
    assert synthetic_page(0).tobytes() == first
    assert synthetic_page(1).tobytes() != first
    assert synthetic_page(2, (640, 480)).size == (640, 480)


def test_load_image_reads_rgb_and_rejects_missing_or_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (30, 20), 200).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (30, 20)
    with pytest.raises(ImageInputError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ImageInputError, match="cannot be read"):
        load_image(bad)
