"""DeepSeek-OCR's decoder as a `DecoderSpec` (`flops.serving.text_decoder_spec`): `decoders`
counts it exactly as `analytic` does, so serving steps of both model kinds share one code path."""

from __future__ import annotations

import pytest

from llm_perf_opt.flops import analytic, decoders
from llm_perf_opt.flops.configs import builtin_config
from llm_perf_opt.flops.dsocr_decoder import text_decoder_spec
from llm_perf_opt.vocab import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tiny", [False, True])
def test_decoders_count_the_ocr_decoder_as_analytic_does(family: str, tiny: bool) -> None:
    text = builtin_config(family, tiny=tiny).text
    spec = text_decoder_spec(text)
    for lp in (1, 282, 912):
        for convention in analytic.CONVENTIONS:
            assert decoders.prefill_flops(spec, lp, convention) == analytic.prefill_flops(
                text, lp, convention
            )
        assert decoders.decode_flops_per_token(spec, lp + 1) == (
            analytic.decode_flops_per_token(text, lp + 1)
        )


def test_the_v1_decode_token_is_the_documented_figure() -> None:
    spec = text_decoder_spec(builtin_config("deepseek-ocr").text)
    # v1: 1,148,190,720 + 61,440·C per decode token (docs/flops.md)
    assert decoders.decode_flops_per_token(spec, 291).total_flops == 1_148_190_720 + 61_440 * 291
