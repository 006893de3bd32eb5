#!/usr/bin/env bash
# Paper Table 10: AutoAttack accuracy of TRADES and IKL-AT (CIFAR-100, WRN-34-10) at
# eps = 2, 4, 6, 8, 10, 12 /255: an eval_autoattack.py loop over eps, no training cells of its own.
# It evaluates the runs of at_cifar100.sh (trained here first if missing, resumable); by default
# seed 0 only, since one AutoAttack pass costs hours: SEEDS=0,1,2 for all three.
#   bash scripts/aa_eps.sh
#   EPS="4/255,8/255" bash scripts/aa_eps.sh
#   SMOKE=1 OUT=/tmp/smoke bash scripts/aa_eps.sh
# Environment and smoke mode: scripts/common.sh.
set -euo pipefail
SEEDS="${SEEDS:-0}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CELLS=(at_cifar100/trades at_cifar100/ikl_at)
EPS="${EPS:-2/255,4/255,6/255,8/255,10/255,12/255}"

train train_at.py "${CELLS[@]}" -- "$@"
mapfile -t DIRS < <(eval_dirs "${CELLS[@]}")
evaluate aa_eps cifar100 "[autoattack]" "${DIRS[@]}" -- "eps=$EPS"
tables table10_aa_eps
