#!/usr/bin/env bash
# Paper Table 2 (CIFAR-100 adversarial training, clean / AutoAttack) and Table 11 (PGD-10/20,
# CW-10/20, AA, worst case) for IKL-AT and TRADES, basic augmentation and AutoAugment, WRN-34-10.
#   bash scripts/at_cifar100.sh                 # 4 cells x 3 seeds, then AutoAttack on each final EMA model
#   SMOKE=1 OUT=/tmp/smoke bash scripts/at_cifar100.sh
# Cells: configs/experiment/at_cifar100/*.yaml. Environment and smoke mode: scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CELLS=(at_cifar100/ikl_at at_cifar100/ikl_at_autoaug at_cifar100/trades at_cifar100/trades_autoaug)

train train_at.py "${CELLS[@]}" -- "$@"
mapfile -t DIRS < <(eval_dirs "${CELLS[@]}")
# Table 2 needs AutoAttack; Table 11 adds PGD-k / CW-k (step 2/255) and the per-sample worst case.
evaluate at_cifar100 cifar100 "[autoattack,pgd10,pgd20,cw10,cw20]" "${DIRS[@]}"
tables table2_at_cifar100 table11_attacks
