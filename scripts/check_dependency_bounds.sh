#!/usr/bin/env bash
# The dependency ranges in pyproject.toml are only honest if both ends work. This installs the
# analysis and dev dependencies twice into fresh virtual environments — at the lowest versions the
# ranges allow (uv's `lowest-direct` resolution) and at the newest — prints what was installed and
# runs the test suite in each. The runner extra (torch, transformers) is left out: its tests skip
# without it, and its range is tested by the README's test line (newest) and by the GPU machine's
# torch 2.11 (lowest), where every committed trace was captured.
#   bash scripts/check_dependency_bounds.sh [lowest-direct|highest ...]
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/tool"
"$work/tool/bin/python" -m pip install -q uv
uv=$work/tool/bin/uv
status=0
for resolution in "${@:-lowest-direct highest}"; do
  for r in $resolution; do
    env=$work/$r
    "$uv" venv -q -p python3 "$env"
    "$uv" pip install -q -p "$env/bin/python" --resolution "$r" -e ".[dev]"
    echo "== $r: $("$uv" pip freeze -p "$env/bin/python" | grep -iE '^(polars|pyarrow|adbc-driver-sqlite|click|sqlite-utils|rich|matplotlib|perfetto|bokeh|pyyaml|numpy|pytest|hypothesis|playwright)==' | tr '\n' ' ')"
    if "$env/bin/python" -m pytest -q -p no:cacheprovider -x; then
      echo "== $r: passed"
    else
      echo "== $r: FAILED"; status=1
    fi
  done
done
exit $status
