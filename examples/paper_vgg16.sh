#!/usr/bin/env bash
# The PackNet paper's main experiment (Mallya & Lazebnik, CVPR 2018): an ImageNet-trained VGG-16
# with three fine-grained tasks added in the order of the official scripts - CUB-200-2011 birds,
# Stanford Cars, Oxford Flowers-102 - using the official schedule. For users with the data and a
# GPU: on a CPU this takes weeks. Nothing is downloaded.
#
#   bash examples/paper_vgg16.sh DATA_ROOT VGG16_WEIGHTS [WORK_DIR]
#
#   DATA_ROOT      holds imagenet/, CUB_200_2011/, stanford_cars/ and flowers-102/ in their
#                  publishers' layouts (see `packtool add-task --help` and the README).
#   VGG16_WEIGHTS  an ImageNet-trained VGG-16 state_dict (.pth/.pt/.safetensors), e.g.
#                  torchvision's vgg16-397923af.pth copied from a machine that has it.
#   WORK_DIR       where model.pt and export/ go (default ./paper-vgg16).
#
# Top-1 error (%) the paper reports for this setting, PackNet vs separately fine-tuned networks
# (the upper bound, 4x the storage):
#
#   task       PackNet   separate networks
#   ImageNet     29.3        28.4
#   CUBS         25.7        22.6
#   Cars         18.1        14.0
#   Flowers      10.1         8.7
#
# `packtool eval` prints accuracies (fractions): error = 100 * (1 - accuracy).
set -euo pipefail

usage="usage: bash $0 DATA_ROOT VGG16_WEIGHTS [WORK_DIR]"
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "$usage" >&2
  exit 2
fi
data_root=$1
weights=$2
work=${3:-./paper-vgg16}
packtool=${PACKTOOL:-packtool}

fail() { echo "error: $*" >&2; exit 1; }
command -v "$packtool" >/dev/null 2>&1 \
  || fail "'$packtool' not found; install packtool (pip install -e .) or set PACKTOOL"
[ -d "$data_root" ] || fail "data root $data_root is not a directory ($usage)"
[ -f "$weights" ] || fail "VGG-16 weights file $weights does not exist ($usage)"
for sub in imagenet/train imagenet/val CUB_200_2011/images stanford_cars/cars_train \
           stanford_cars/cars_test flowers-102/jpg; do
  [ -d "$data_root/$sub" ] || fail "$data_root/$sub is missing: put the dataset there in its publisher's layout"
done
if ! "${PYTHON:-python3}" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    2>/dev/null; then
  echo "warning: no CUDA GPU visible; this recipe is meant for a GPU and will be very slow" >&2
fi

mkdir -p "$work"
model="$work/model.pt"
common=(--data-root "$data_root" --batch-size 32 --optimizer sgd --momentum 0.9)

# VGG-16 from the local ImageNet weights; its 1000-class classifier becomes task 1's head.
# --policy frozen is the paper's: task 1's biases are shared by every later task and frozen
# (the official scripts' "nobias" runs); packtool's default gives each task its own biases.
"$packtool" init "$model" --arch vgg16 --weights "$weights" --input-size 3x224x224 \
  --policy frozen --force

# Task 1, ImageNet: no training (the weights are already ImageNet's), prune half of the weights,
# fine-tune the kept half 10 epochs at lr 1e-4.
"$packtool" add-task "$model" --task imagenet --data imagenet --prune 0.5 \
  --epochs 0 --finetune-epochs 10 --finetune-lr 1e-4 "${common[@]}"

# Tasks 2-4: train the free weights 20 epochs at lr 1e-3 (x0.1 after 10), prune, fine-tune the
# kept weights 10 epochs at lr 1e-4. Flowers, the last task, keeps every remaining weight.
for spec in cubs:0.75 cars:0.75 flowers:0; do
  data=${spec%%:*}
  prune=${spec##*:}
  "$packtool" add-task "$model" --task "$data" --data "$data" --prune "$prune" \
    --epochs 20 --lr 1e-3 --lr-decay-epochs 10 --finetune-epochs 10 --finetune-lr 1e-4 \
    "${common[@]}"
done

"$packtool" eval "$model" --all --data-root "$data_root"
