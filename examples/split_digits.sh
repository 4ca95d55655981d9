#!/usr/bin/env bash
# Quick start: five two-class tasks of scikit-learn's handwritten digits ({0,1}, {2,3}, ...,
# {8,9}) packed into one LeNet with PackNet from the plan examples/split_digits.toml, evaluated
# and exported, with the packtool CLI only.
# Runs on a 2-core CPU in under a minute; nothing is downloaded (the digits ship with
# scikit-learn).
#
#   bash examples/split_digits.sh [WORK_DIR]      # default ./split-digits
#
# WORK_DIR receives model.pt (the pack) and export/ (one ONNX file per task + pack.safetensors).
# Set PACKTOOL to use another executable (default: packtool on PATH).
set -euo pipefail

work=${1:-./split-digits}
packtool=${PACKTOOL:-packtool}
if ! command -v "$packtool" >/dev/null 2>&1; then
  echo "error: '$packtool' not found; install packtool (pip install -e .) or set PACKTOOL" >&2
  exit 1
fi

mkdir -p "$work"
model="$work/model.pt"
plan="$(dirname "$0")/split_digits.toml"

# The whole sequence from its plan: a LeNet for 8x8 grayscale images, then five tasks, each
# training the free weights (10 epochs), releasing 75% of them, fine-tuning the kept ones
# (5 epochs) and freezing them; the last task keeps every remaining free weight. After every
# task, every task so far is re-measured: old tasks are bit-identical, so their accuracy never
# moves. (Run alone, `packtool run` continues a sequence where it stopped; this script starts
# over.)
rm -f "$model" "$work/results.json" "$work/results.csv"
"$packtool" run "$plan" --model "$model"

# The same test images without their task ids: each group of 8 images goes to the task whose
# feature statistics (fitted on validation when the task was added) it fits best.
"$packtool" eval "$model" --task-free --group 8

# One ONNX file per task (sparse initializers, checked against PyTorch in onnxruntime) and the
# shared-weight archive of all tasks.
"$packtool" export "$model" --all --out "$work/export"
