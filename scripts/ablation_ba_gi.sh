#!/usr/bin/env bash
# Paper Table 1: KL -> DKL -> +BA -> +BA+GI (IKL), for adversarial training (CIFAR-100, clean / AA)
# and knowledge distillation (ImageNet ResNet-34 -> ResNet-18, top-1).
#   rows (a) and (d) are the cells of Tables 2 and 4 (at_cifar100/trades, at_cifar100/ikl_at,
#   kd_imagenet/kd_res34_res18, kd_imagenet/ikl_res34_res18), trained once for both tables;
#   rows (b) and (c) are at_ablation/{dkl,dkl_ba} and kd_ablation/{dkl,dkl_ba}_res34_res18.
#   bash scripts/ablation_ba_gi.sh
#   TASKS=at bash scripts/ablation_ba_gi.sh          # only the AT half (no ImageNet at hand)
#   SMOKE=1 OUT=/tmp/smoke bash scripts/ablation_ba_gi.sh
# The KD half needs ImageNet (IKL_IMAGENET) and the torchvision teachers (scripts/get_teachers.sh
# with IMAGENET=1). Environment and smoke mode: scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TASKS="${TASKS:-at kd}"
AT_CELLS=(at_cifar100/trades at_ablation/dkl at_ablation/dkl_ba at_cifar100/ikl_at)
KD_CELLS=(kd_imagenet/kd_res34_res18 kd_ablation/dkl_res34_res18 kd_ablation/dkl_ba_res34_res18 kd_imagenet/ikl_res34_res18)

if [[ " $TASKS " == *" at "* ]]; then
  train train_at.py "${AT_CELLS[@]}" -- "$@"
  mapfile -t DIRS < <(eval_dirs "${AT_CELLS[@]}")
  evaluate ablation_ba_gi cifar100 "[autoattack]" "${DIRS[@]}"
fi
if [[ " $TASKS " == *" kd "* ]]; then
  train train_kd.py "${KD_CELLS[@]}" -- "$@"
fi
tables table1_at table1_kd
