#!/usr/bin/env bash
# GPU figures for benchmarks/RESULTS.md: model-only vs full-pipeline clips/s for c3d, i3d and r3d_18 at
# native input sizes, CPU decode frames/s per core at 320x240 and 1920x1080, and their ratios.
# On a GPU machine it stops itself after 8 minutes; `--smoke` checks it on CPU at tiny sizes.
#   bash benchmarks/gpu.sh [--smoke] [--out results.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
export RAY_DATA_DISABLE_PROGRESS_BARS=1
exec timeout 480 python benchmarks/gpu.py "$@"
