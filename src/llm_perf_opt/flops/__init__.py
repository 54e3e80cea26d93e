"""Analytic FLOPs and bytes of DeepSeek-OCR stages (pure Python, no torch).

`configs` describes the architecture; `analytic` counts vision, prefill and decode FLOPs and the
bytes a decode step reads. See docs/flops.md for every formula and convention.
"""
