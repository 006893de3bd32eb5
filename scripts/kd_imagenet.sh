#!/usr/bin/env bash
# Paper Table 4: ImageNet KD, ResNet-34 -> ResNet-18 and ResNet-50 -> MobileNetV1, IKL-KD and KD.
#   bash scripts/kd_imagenet.sh
#   LAUNCHER="torchrun --nproc_per_node=8" bash scripts/kd_imagenet.sh   # DDP, as the paper's 8 GPUs
#   SMOKE=1 OUT=/tmp/smoke bash scripts/kd_imagenet.sh
# Needs ImageNet as ImageFolder trees under IKL_IMAGENET (train/, val/) and the torchvision teachers
# under IKL_TEACHERS_IMAGENET (scripts/get_teachers.sh with IMAGENET=1).
# Cells: configs/experiment/kd_imagenet/*.yaml. Environment and smoke mode: scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CELLS=(kd_imagenet/ikl_res34_res18 kd_imagenet/kd_res34_res18 kd_imagenet/ikl_res50_mv1 kd_imagenet/kd_res50_mv1)

if [[ "$SMOKE" != 1 ]]; then
  teachers="${IKL_TEACHERS_IMAGENET:-download_ckpts/imagenet_teachers}"
  for f in resnet34-333f7ec4.pth resnet50-19c8e357.pth; do
    [[ -f "$teachers/$f" ]] || die "teacher $teachers/$f is missing: run IMAGENET=1 bash scripts/get_teachers.sh (or set IKL_TEACHERS_IMAGENET)"
  done
fi
train train_kd.py "${CELLS[@]}" -- "$@"
tables table4_kd_imagenet
