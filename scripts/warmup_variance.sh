#!/usr/bin/env bash
# Cold vs warmed stage times: fresh runner processes with 0 and with 2 warmup rounds,
# REPEATS each, alternating; every run.meta.json goes into $1 (default /tmp/traces/warmup).
set -euo pipefail
dest=${1:-/tmp/traces/warmup}
repeats=${REPEATS:-3}
mkdir -p "$dest"
for r in $(seq 1 "$repeats"); do
  for w in 0 2; do
    python3 scripts/run_dsocr.py --model deepseek-ocr --mode base --num-images 3 \
      --max-new-tokens 16 --warmup-rounds "$w" --no-nvtx --out "$dest/w${w}_r${r}" >/dev/null
  done
done
