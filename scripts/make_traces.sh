#!/usr/bin/env bash
# Makes the DeepSeek-OCR traces committed in traces/ on an H100 (traces/README.md says how each
# file was made). Run from the repository root on the GPU machine, with the capture kit in
# .devkit/ (its nsys-capture.sh) beside it:   bash scripts/make_traces.sh
# Writes to $OUT: one .sqlite.xz per capture and capture_extras.tgz (NVIDIA's projection CSVs,
# run.meta.json of each capture, the NVTX-overhead benchmark, versions).
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:?set OUT to the folder that receives the files}
work=/tmp/traces
mkdir -p "$work"
common=(--num-images 3 --warmup-rounds 1 --warmup-max-new-tokens 2 --max-new-tokens 6)
capture() {
  local name=$1; shift
  OUT=$work bash .devkit/nsys-capture.sh "$name" -- \
    python3 scripts/run_dsocr.py "$@" "${common[@]}" --out "$work/$name.meta"
  xz -T0 -9 -c "$work/$name.sqlite" > "$out/$name.sqlite.xz"
}
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$work/versions.txt"
capture dsocr_v1_base --model deepseek-ocr --mode base
capture dsocr_v1_gundam --model deepseek-ocr --mode gundam
capture dsocr2_base --model deepseek-ocr2 --mode base
export PYTHONPATH=/tmp/devkit-site:$PWD/src
tar -C "$work" -czf "$out/capture_csvs.tgz" --exclude='*.sqlite' --exclude='*.nsys-rep' \
  --exclude='*.qdstrm' .
python3 benchmarks/bench_nvtx_overhead.py --model deepseek-ocr --mode base --images 3 \
  --max-new-tokens 32 --pairs 3 --json "$work/nvtx_overhead_v1_base.json"
REPEATS=${REPEATS:-3} bash scripts/warmup_variance.sh "$work/warmup"
tar -C "$work" -czf "$out/capture_extras.tgz" --exclude='*.sqlite' --exclude='*.nsys-rep' \
  --exclude='*.qdstrm' .
ls -la "$out"
