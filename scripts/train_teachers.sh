#!/usr/bin/env bash
# The six CIFAR-100 teachers of Tables 13/14 trained from scratch with plain CE (RepDistiller /
# mdistiller teacher recipe: 240 epochs, lr 0.05, decay x0.1 at 150/180/210, batch 64, wd 5e-4),
# for when the published ones (scripts/get_teachers.sh) cannot be had. ShuffleNet/MobileNet are
# students only. Each final model is linked as $OUT/teachers/<name>_vanilla/ckpt_epoch_240.pth,
# the layout the KD cells read from IKL_TEACHERS.
#   bash scripts/train_teachers.sh                 # one seed (TEACHER_SEED=0), as the published set
#   SMOKE=1 OUT=/tmp/smoke bash scripts/train_teachers.sh
# Then: IKL_TEACHERS=$OUT/teachers bash scripts/kd_cifar100.sh teacher.acc_tolerance=3
# (a retrained teacher is not the published one: widen the accuracy check or set teacher.expected_acc=null).
# Environment and smoke mode: scripts/common.sh.
set -euo pipefail
SEEDS="${TEACHER_SEED:-0}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAMES=(resnet56 resnet110 resnet32x4 wrn_40_2 vgg13 ResNet50)
CELLS=("${NAMES[@]/#/kd_teachers/}")
DEST="$OUT/teachers"

train train_kd.py "${CELLS[@]}" -- "$@"

say "linking the final models into $DEST"
for name in "${NAMES[@]}"; do
  final="$(run_dir "kd_teachers/$name" "$SEEDS")/checkpoints/final.pt"
  [[ -f "$final" ]] || die "$final is missing: the $name teacher run did not finish"
  mkdir -p "$DEST/${name}_vanilla"
  ln -sfn "$final" "$DEST/${name}_vanilla/ckpt_epoch_240.pth"
  echo "$DEST/${name}_vanilla/ckpt_epoch_240.pth -> $final"
done
tables teachers_cifar100
echo "use them with: IKL_TEACHERS=$DEST bash scripts/kd_cifar100.sh teacher.acc_tolerance=3"
