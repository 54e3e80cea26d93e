"""The instrumented DeepSeek-OCR runner: the only part of the package that imports torch.

`model` builds the architecture (random weights from `llm_perf_opt.flops.configs`, or a local
snapshot), `preprocess` shapes images, `stages` runs vision / prefill / decode separately,
`pipeline` times and annotates them (`nvtx_marks`) and `meta` emits the run metadata; `cli` is
the command line behind `scripts/run_dsocr.py`. `--serve` runs requests as a serving engine's
steps instead: `schedule` plans them, `serve` executes them, `serving` is the run.
"""
