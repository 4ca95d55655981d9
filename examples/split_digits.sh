#!/usr/bin/env bash
# Quick start: five two-class tasks of scikit-learn's handwritten digits ({0,1}, {2,3}, ...,
# {8,9}) packed into one LeNet with PackNet, evaluated, and exported, with the packtool CLI only.
# Runs on a CPU in well under a minute; nothing is downloaded (the digits ship with scikit-learn).
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

# A LeNet for 8x8 grayscale images; --force starts over if the work dir was used before.
"$packtool" init "$model" --arch lenet --input-size 1x8x8 --force

# Each task trains the free weights (10 epochs), releases 75% of them (--prune 0.75), fine-tunes
# the kept ones (5 epochs) and freezes them. The last task keeps every remaining free weight.
for pair in 0,1 2,3 4,5 6,7 8,9; do
  prune=0.75
  if [ "$pair" = 8,9 ]; then prune=0; fi
  "$packtool" add-task "$model" --data digits --classes "$pair" --prune "$prune" \
    --epochs 10 --finetune-epochs 5 --lr 0.05 --finetune-lr 0.005 --lr-decay-epochs 0 \
    --device cpu
done

# Every task re-evaluated on its held-out test split: old tasks are bit-identical, so their
# accuracy is exactly what add-task reported when they were added.
"$packtool" eval "$model" --all

# The same test images without their task ids: each group of 8 images goes to the task whose
# feature statistics (fitted on validation when the task was added) it fits best.
"$packtool" eval "$model" --task-free --group 8

# One ONNX file per task (sparse initializers, checked against PyTorch in onnxruntime) and the
# shared-weight archive of all tasks.
"$packtool" export "$model" --all --out "$work/export"
