#!/usr/bin/env bash
# Paper Tables 13 and 14: CIFAR-100 KD, 11 teacher -> student pairs x {IKL-KD as released (GI off),
# IKL-KD as described (GI on), KD, DKD} = 44 cells, 3 seeds each.
#   bash scripts/kd_cifar100.sh                           # all 44 cells
#   METHODS="ikl ikl_gi" PAIRS="res32x4_res8x4" bash scripts/kd_cifar100.sh
#   IKL_TEACHERS=outputs/reproduce/teachers bash scripts/kd_cifar100.sh teacher.acc_tolerance=3
#                                                         # with teachers from scripts/train_teachers.sh
#   SMOKE=1 OUT=/tmp/smoke bash scripts/kd_cifar100.sh
# Teachers: the published CIFAR-100 teachers (scripts/get_teachers.sh) under IKL_TEACHERS
# (default download_ckpts/cifar_teachers); each run checks its teacher's test accuracy against the
# paper's (teacher.expected_acc, +-teacher.acc_tolerance) before training.
# Smoke mode: every one of the 44 cells is composed and resolved (a compose-only check), and one
# pair (res32x4_res8x4) is trained for all four methods: with the smoke overrides every pair
# becomes the same resnet8 -> resnet8 run on digits, so the other 40 would add time, not coverage.
# Environment: scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ALL_PAIRS="res56_res20 res110_res32 res32x4_res8x4 wrn40_2_wrn_16_2 wrn40_2_wrn_40_1 vgg13_vgg8
  res32x4_shuv1 wrn40_2_shuv1 vgg13_mv2 res50_mv2 res32x4_shuv2"
read -r -a pairs <<<"$(echo ${PAIRS:-$ALL_PAIRS})"
read -r -a methods <<<"${METHODS:-ikl ikl_gi kd dkd}"
if [[ "$SMOKE" == 1 ]]; then
  read -r -a all_pairs <<<"$(echo $ALL_PAIRS)"
  read -r -a pairs <<<"${PAIRS:-res32x4_res8x4}"
else
  all_pairs=("${pairs[@]}")
fi

cells_of() { # METHODS... -- PAIRS...
  local m p ms=() ps=()
  while [[ "$1" != -- ]]; do ms+=("$1"); shift; done
  shift
  ps=("$@")
  for p in "${ps[@]}"; do for m in "${ms[@]}"; do echo "kd_cifar100/${m}_${p}"; done; done
}
mapfile -t CELLS < <(cells_of "${methods[@]}" -- "${pairs[@]}")
mapfile -t CHECK < <(cells_of ikl ikl_gi kd dkd -- "${all_pairs[@]}")

say "compose check of ${#CHECK[@]} cells (every value resolves and passes the config checks)"
run "$PYTHON" - "${CHECK[@]}" <<'PY'
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ikl.engine.validate import validate_config

with initialize_config_dir(config_dir=str(Path("configs").resolve()), version_base="1.3"):
    for cell in sys.argv[1:]:
        cfg = compose(config_name="train_kd", overrides=[f"experiment={cell}"])
        assert cfg.cell == cell, f"{cell}: cell is {cfg.cell}"
        validate_config(OmegaConf.to_container(cfg, resolve=True))
print(f"{len(sys.argv) - 1} cells compose")
PY

if [[ "$SMOKE" != 1 ]]; then
  teachers="${IKL_TEACHERS:-download_ckpts/cifar_teachers}"
  for cell in "${CELLS[@]}"; do
    t=$(sed -n 's|^  checkpoint: .*}/\(.*\)_vanilla/ckpt_epoch_240.pth.*|\1|p' "configs/experiment/$cell.yaml")
    [[ -f "$teachers/${t}_vanilla/ckpt_epoch_240.pth" ]] ||
      die "teacher $teachers/${t}_vanilla/ckpt_epoch_240.pth is missing: run scripts/get_teachers.sh (or scripts/train_teachers.sh and set IKL_TEACHERS)"
  done
fi

train train_kd.py "${CELLS[@]}" -- "$@"
tables table13_14_kd_cifar100
