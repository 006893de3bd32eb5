#!/usr/bin/env bash
# Paper Tables 7 and 8: the two IKL-AT weights on CIFAR-100 around the headline cell
# (alpha/4 = 5, beta = 5, tau = 4 = at_cifar100/ikl_at, trained once):
#   Table 7: paper alpha/4 in {3, 4, 5, 6} = loss.wmse_weight in {12, 16, 20, 24}
#   Table 8: paper beta in {2, 3, 4, 5}    = loss.sce_weight in {2, 3, 4, 5}
#   bash scripts/sweep_weights.sh
#   SMOKE=1 OUT=/tmp/smoke bash scripts/sweep_weights.sh
# Environment and smoke mode: scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CELLS=(
  at_ablation/wmse12 at_ablation/wmse16 at_ablation/wmse24
  at_ablation/sce2 at_ablation/sce3 at_ablation/sce4
  at_cifar100/ikl_at
)

train train_at.py "${CELLS[@]}" -- "$@"
mapfile -t DIRS < <(eval_dirs "${CELLS[@]}")
evaluate sweep_weights cifar100 "[autoattack]" "${DIRS[@]}"
tables table7_wmse table8_sce
