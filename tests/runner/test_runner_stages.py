"""Stage-wise inference equals `generate`, and the image embeddings follow the reference layout."""

from __future__ import annotations

import pytest

# The runner extra (`pip install -e ".[runner]"`) brings these; without it the module is skipped.
pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
import torch

from llm_perf_opt.runner.models import BuiltModel, build_model
from llm_perf_opt.runner.nvtx_stages import (
    INSTRUCTION_TOKEN_IDS,
    PreparedImage,
    decode_step,
    prefill_stage,
    prepare_image,
    prompt_ids,
    vision_stage,
    with_random_pixels,
)
from llm_perf_opt.runner.preprocess import synthetic_page

torch.set_num_threads(1)

CASES = [
    ("deepseek-ocr", "tiny", None),
    ("deepseek-ocr", "small", None),
    ("deepseek-ocr", "base", None),
    ("deepseek-ocr", "large", None),
    ("deepseek-ocr", "gundam", None),
    ("deepseek-ocr", "gundam", (3, 2)),
    ("deepseek-ocr2", "base", None),
    ("deepseek-ocr2", "gundam", None),
    ("deepseek-ocr2", "gundam", (1, 2)),
]
_MODELS: dict[str, BuiltModel] = {}


def tiny(family: str) -> BuiltModel:
    if family not in _MODELS:
        _MODELS[family] = build_model(family, tiny=True, dtype=torch.float32, seed=7)
    return _MODELS[family]


def staged_tokens(built: BuiltModel, prepared: PreparedImage, max_new_tokens: int) -> list[int]:
    token, past = prefill_stage(built, prepared, vision_stage(built, prepared))
    tokens = [token]
    for k in range(1, max_new_tokens):
        token, past = decode_step(built, token, past, prepared.prefill_len + k - 1)
        tokens.append(token)
    return tokens


@pytest.mark.parametrize(("family", "mode", "crops"), CASES)
def test_staged_decoding_equals_generate(
    family: str, mode: str, crops: tuple[int, int] | None
) -> None:
    built = tiny(family)
    prepared = prepare_image(built, synthetic_page(1), mode, crops)
    expected = built.model.generate(
        **prepared.generate_inputs(family),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=None,
    )
    assert expected.shape[1] == prepared.prefill_len + 6
    assert staged_tokens(built, prepared, 6) == expected[0, prepared.prefill_len :].tolist()


def test_image_embeddings_replace_exactly_the_placeholder_positions() -> None:
    # If the vision stage were skipped, the first token would come from placeholder embeddings.
    built = tiny("deepseek-ocr")
    prepared = prepare_image(built, synthetic_page(0), "base")
    embeds = vision_stage(built, prepared)
    token, _ = prefill_stage(built, prepared, embeds)
    other, _ = prefill_stage(built, prepared, embeds.flip(0))
    logits_a = _first_logits(built, prepared, embeds)
    logits_b = _first_logits(built, prepared, embeds.flip(0))
    assert not torch.allclose(logits_a, logits_b)
    assert token == int(logits_a.argmax()) and other == int(logits_b.argmax())


def _first_logits(built: BuiltModel, prepared: PreparedImage, embeds: torch.Tensor) -> torch.Tensor:
    ids = prepared.input_ids
    table = built.model.get_input_embeddings()
    with torch.inference_mode():
        x = table(ids)
        x[ids == built.image_token_id] = embeds
        logits: torch.Tensor = built.model(inputs_embeds=x, logits_to_keep=1).logits[0, -1]
        return logits


def test_v1_layout_puts_newlines_after_rows_and_the_separator_last() -> None:
    built = tiny("deepseek-ocr")
    prepared = prepare_image(built, synthetic_page(0), "gundam", crops=(3, 2))
    embeds = vision_stage(built, prepared)
    base = built.model.model
    c = built.config.sam.output_grid(built.config.mode("gundam").crop_size or 0)
    g = built.config.sam.output_grid(built.config.mode("gundam").image_size)
    cols, rows = 3, 2
    local_width = c * cols + 1
    newline_rows = [r * local_width + c * cols for r in range(c * rows)]
    offset = c * rows * local_width
    newline_rows += [offset + r * (g + 1) + g for r in range(g)]
    is_newline = [bool(torch.equal(e, base.image_newline)) for e in embeds]
    assert [i for i, flag in enumerate(is_newline) if flag] == newline_rows
    assert torch.equal(embeds[-1], base.view_seperator)
    assert embeds.shape[0] == offset + g * (g + 1) + 1 == prepared.layout.image_positions


def test_v1_crops_tile_the_local_grid_row_major(monkeypatch: pytest.MonkeyPatch) -> None:
    # Give every token of every crop a distinct code, then check where each lands.
    built = tiny("deepseek-ocr")
    base = built.model.model
    prepared = prepare_image(built, synthetic_page(0), "gundam", crops=(3, 2))
    real_encode = base.encode_views

    def coded(views: torch.Tensor) -> torch.Tensor:
        out = real_encode(views)
        n, tokens, hidden = out.shape
        code = torch.arange(n * tokens, dtype=out.dtype).reshape(n, tokens, 1)
        return code.expand(n, tokens, hidden).clone()

    monkeypatch.setattr(base, "encode_views", coded)
    embeds = vision_stage(built, prepared)
    c = built.config.sam.output_grid(built.config.mode("gundam").crop_size or 0)
    cols, rows = 3, 2
    for crop in range(cols * rows):
        crop_row, crop_col = divmod(crop, cols)
        for token in range(c * c):
            i, j = divmod(token, c)
            position = (crop_row * c + i) * (c * cols + 1) + crop_col * c + j
            assert float(embeds[position, 0]) == crop * c * c + token


def test_prompt_is_bos_placeholders_instruction() -> None:
    for family in ("deepseek-ocr", "deepseek-ocr2"):
        for built in (tiny(family), build_model(family, device="meta")):
            ids = prompt_ids(built, 5)
            assert ids[0] == 0 and ids[1:6] == [built.image_token_id] * 5
            assert len(ids) == 6 + len(INSTRUCTION_TOKEN_IDS)
            assert built.image_token_id not in ids[6:] and 0 not in ids[6:]
            assert max(ids) < built.config.text.vocab_size


def test_prefill_len_counts_bos_image_and_instruction() -> None:
    built = tiny("deepseek-ocr2")
    prepared = prepare_image(built, synthetic_page(0), "gundam")
    assert prepared.prompt_text_tokens == 1 + len(INSTRUCTION_TOKEN_IDS)
    assert prepared.prefill_len == prepared.layout.image_positions + prepared.prompt_text_tokens


def test_decode_steps_grow_the_cache_one_position_each() -> None:
    built = tiny("deepseek-ocr")
    prepared = prepare_image(built, synthetic_page(0), "base")
    token, past = prefill_stage(built, prepared, vision_stage(built, prepared))
    assert past.get_seq_length() == prepared.prefill_len
    for k in range(1, 4):
        token, past = decode_step(built, token, past, prepared.prefill_len + k - 1)
        assert past.get_seq_length() == prepared.prefill_len + k


def test_random_pixels_keep_shapes_and_layout() -> None:
    built = tiny("deepseek-ocr2")
    prepared = prepare_image(built, synthetic_page(0), "gundam")
    a = with_random_pixels(prepared, torch.Generator().manual_seed(0))
    b = with_random_pixels(prepared, torch.Generator().manual_seed(0))
    assert a.pixel_values.shape == prepared.pixel_values.shape
    assert a.pixel_values_local is not None and prepared.pixel_values_local is not None
    assert a.pixel_values_local.shape == prepared.pixel_values_local.shape
    assert torch.equal(a.pixel_values, b.pixel_values)
    assert not torch.equal(a.pixel_values, prepared.pixel_values)
    assert a.layout == prepared.layout and torch.equal(a.input_ids, prepared.input_ids)
