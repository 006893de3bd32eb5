#!/usr/bin/env bash
# Paper Table 9: the temperature tau of the class-wise prior in IKL-AT (CIFAR-100, alpha/4 = 5,
# beta = 5), tau = 1, 2, 3, 4 (tau = 4 is the Table 2 cell at_cifar100/ikl_at, trained once).
#   bash scripts/sweep_tau.sh
#   SMOKE=1 OUT=/tmp/smoke bash scripts/sweep_tau.sh
# The same sweep as one Hydra multirun on any base: python train_at.py -m experiment=at_cifar100/ikl_at
# loss.prior_temperature=1,2,3,4 (one run dir and W&B run per job, grouped by the sweep), or as a W&B
# sweep: wandb sweep configs/sweep/at_tau.yaml. Environment and smoke mode: scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CELLS=(at_ablation/tau1 at_ablation/tau2 at_ablation/tau3 at_cifar100/ikl_at)

train train_at.py "${CELLS[@]}" -- "$@"
mapfile -t DIRS < <(eval_dirs "${CELLS[@]}")
evaluate sweep_tau cifar100 "[autoattack]" "${DIRS[@]}"
tables table9_tau
