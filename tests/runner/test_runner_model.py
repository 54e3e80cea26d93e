"""Model construction: full-size shapes on the meta device, tiny models, local snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# The runner extra (`pip install -e ".[runner]"`) brings these; without it the module is skipped.
pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
import torch
from transformers import DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

from llm_perf_opt.errors import ConfigError
from llm_perf_opt.runner.models import ModelLoadError, build_model, load_local
from llm_perf_opt.runner.nvtx_stages import decode_step, prefill_stage, prepare_image, vision_stage
from llm_perf_opt.runner.preprocess import synthetic_page

torch.set_num_threads(1)


def test_full_size_v1_has_the_checkpoint_parameter_count() -> None:
    # dsocr-architecture.md: "Whole checkpoint 3,336,106,240 parameters"
    built = build_model("deepseek-ocr", device="meta")
    assert built.n_params == 3_336_106_240


def test_full_size_ocr2_has_about_3_39_billion_parameters() -> None:
    # dsocr-architecture.md: "Seen on the H100 (random weights, bf16): 3.39 B parameters"
    built = build_model("deepseek-ocr2", device="meta")
    assert round(built.n_params / 1e7) == 339


def test_full_size_v1_modules_follow_the_architecture() -> None:
    m = build_model("deepseek-ocr", device="meta").model
    sam = m.model.sam_model
    windows = [layer.window_size for layer in sam.layers]
    assert windows == [0 if i in (2, 5, 8, 11) else 14 for i in range(12)]
    assert sam.proj.conv1.out_channels == 512 and sam.proj.conv2.out_channels == 1024
    clip = m.model.vision_model
    assert len(clip.encoder.layers) == 24
    assert clip.embeddings.position_embedding.num_embeddings == 257
    assert (m.model.projector.in_features, m.model.projector.out_features) == (2048, 1280)
    layers = m.model.language_model.layers
    assert type(layers[0].mlp).__name__ == "DeepseekOcr2TextMLP"
    assert layers[0].mlp.gate_proj.out_features == 6848
    moe = layers[1].mlp
    assert tuple(moe.experts.gate_up_proj.shape) == (64, 2 * 896, 1280)
    assert moe.gate.top_k == 6 and moe.shared_experts.gate_proj.out_features == 2 * 896
    assert (m.lm_head.in_features, m.lm_head.out_features) == (1280, 129280)
    assert m.lm_head.weight is not m.model.language_model.embed_tokens.weight


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "mode"),
    [
        ("deepseek-ocr", "tiny"),
        ("deepseek-ocr", "small"),
        ("deepseek-ocr", "base"),
        ("deepseek-ocr", "large"),
        ("deepseek-ocr", "gundam"),
        ("deepseek-ocr2", "base"),
        ("deepseek-ocr2", "gundam"),
    ],
)
def test_full_size_vision_stage_shapes_on_meta(family: str, mode: str) -> None:
    built = build_model(family, device="meta")
    prepared = prepare_image(built, synthetic_page(0), mode)
    embeds = vision_stage(built, prepared)
    assert tuple(embeds.shape) == (prepared.layout.image_positions, 1280)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["deepseek-ocr", "deepseek-ocr2"])
def test_full_size_prefill_and_decode_shapes_on_meta(family: str) -> None:
    # The eager MoE loop needs real values (nonzero); batched_mm runs the same weights on meta.
    built = build_model(family, device="meta", experts_implementation="batched_mm")
    prepared = prepare_image(built, synthetic_page(0), "base")
    embeds = vision_stage(built, prepared)
    ids = prepared.input_ids
    with torch.inference_mode():
        out = built.model(
            inputs_embeds=built.model.get_input_embeddings()(ids), use_cache=True, logits_to_keep=1
        )
        assert tuple(out.logits.shape) == (1, 1, 129280)
        assert out.past_key_values.get_seq_length() == prepared.prefill_len
    assert embeds.shape[0] == prepared.layout.image_positions


def test_tiny_weights_depend_only_on_the_seed() -> None:
    def params(seed: int) -> list[torch.Tensor]:
        built = build_model("deepseek-ocr", tiny=True, dtype=torch.float32, seed=seed)
        return [p.clone() for p in built.model.parameters()]

    a, b, c = params(0), params(0), params(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert all(torch.isfinite(x).all() for x in a)


def test_random_init_sets_norms_to_one_and_biases_to_zero() -> None:
    m = build_model("deepseek-ocr2", tiny=True, dtype=torch.float32).model
    layer = m.model.language_model.layers[0]
    assert torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight))
    sam_layer = m.model.vision_tower.sam_encoder.layers[0]
    assert torch.count_nonzero(sam_layer.attn.qkv.bias) == 0
    assert 0.01 < float(sam_layer.attn.qkv.weight.std()) < 0.03


def test_built_model_records_its_settings() -> None:
    built = build_model("deepseek-ocr2", tiny=True, dtype=torch.float32)
    assert built.family == "deepseek-ocr2" and built.random_weights
    assert built.attn_implementation == "sdpa" and built.experts_implementation == "eager"
    assert built.config_dict["tiny"] is True
    assert built.hf_config_dict["model_type"] == "deepseek_ocr2"
    # tiny vocabularies are 512 rows: the placeholder moves inside them
    assert built.image_token_id == built.config.text.vocab_size - 1
    assert build_model("deepseek-ocr2", device="meta").image_token_id == 128815
    json.dumps(built.config_dict)
    json.dumps(built.hf_config_dict)


def test_experts_implementation_is_applied_to_the_decoder() -> None:
    built = build_model("deepseek-ocr", tiny=True, experts_implementation="grouped_mm")
    assert built.model.model.language_model.config._experts_implementation == "grouped_mm"


def test_unknown_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="deepseek-ocr or deepseek-ocr2"):
        build_model("deepseek-ocr3")


def _tiny_hf_ocr2_config() -> DeepseekOcr2Config:
    sam = {
        "hidden_size": 32,
        "output_channels": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "window_size": 6,
        "global_attn_indexes": [1],
        "downsample_channels": [32, 48],
    }
    encoder = {
        "hidden_size": 48,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    text = {
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "moe_intermediate_size": 16,
        "mlp_layer_types": ["dense", "sparse"],
    }
    return DeepseekOcr2Config(
        vision_config={"sam_config": sam, "encoder_config": encoder},
        text_config=text,
        image_token_id=299,
    )


def test_local_ocr2_snapshot_loads_its_weights(tmp_path: Path) -> None:
    torch.manual_seed(3)
    saved = DeepseekOcr2ForConditionalGeneration(_tiny_hf_ocr2_config())
    saved.save_pretrained(tmp_path)
    built = load_local(tmp_path, torch.float32, "cpu")
    assert built.family == "deepseek-ocr2" and not built.random_weights
    assert built.name == str(tmp_path) and built.image_token_id == 299
    assert built.config.text.vocab_size == 300
    original = dict(saved.named_parameters())
    for name, param in built.model.named_parameters():
        assert torch.equal(param, original[name]), name
    prepared = prepare_image(built, synthetic_page(0), "base")
    token, past = prefill_stage(built, prepared, vision_stage(built, prepared))
    next_token, past = decode_step(built, token, past, prepared.prefill_len)
    assert 0 <= next_token < 300
    assert past.get_seq_length() == prepared.prefill_len + 1


def test_v1_snapshot_is_refused_with_the_pinned_version(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"language_config": {"hidden_size": 1280}}))
    with pytest.raises(ModelLoadError, match=r"4\.46\.3"):
        load_local(tmp_path, torch.float32, "cpu")


def test_path_without_config_or_of_another_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_local(tmp_path / "nowhere", torch.float32, "cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="llama"):
        load_local(tmp_path, torch.float32, "cpu")
