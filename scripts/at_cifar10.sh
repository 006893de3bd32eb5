#!/usr/bin/env bash
# Paper Table 3 (CIFAR-10 adversarial training, clean / AutoAttack) for IKL-AT and TRADES, basic
# augmentation and AutoAugment, WRN-34-10 (adversary: sCE only, attack.wmse_weight=0).
#   bash scripts/at_cifar10.sh
#   SMOKE=1 OUT=/tmp/smoke bash scripts/at_cifar10.sh
# Cells: configs/experiment/at_cifar10/*.yaml. Environment and smoke mode: scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CELLS=(at_cifar10/ikl_at at_cifar10/ikl_at_autoaug at_cifar10/trades at_cifar10/trades_autoaug)

train train_at.py "${CELLS[@]}" -- "$@"
mapfile -t DIRS < <(eval_dirs "${CELLS[@]}")
evaluate at_cifar10 cifar10 "[autoattack]" "${DIRS[@]}"
tables table3_at_cifar10
