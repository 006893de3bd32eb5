#!/usr/bin/env bash
# Paper Table 5: KD on ImageNet-LT (ResNeXt-101-32x4d teacher -> ResNet-18 / ResNet-50, KL-KD and IKL-KD),
# plus the baselines that are the teachers and the self-KD rows of DKLv1/Imbalanced_KD-dkl/README.md.
#   bash scripts/kd_imagenet_lt.sh
#   LAUNCHER="torchrun --nproc_per_node=4" bash scripts/kd_imagenet_lt.sh   # the official runs: 4 GPUs, batch 128
#   SMOKE=1 OUT=/tmp/smoke bash scripts/kd_imagenet_lt.sh
# Needs ImageNet under IKL_IMAGENET (train/, val/) and the split files ImageNet_LT_{train,val,test}.txt under
# IKL_IMAGENET_LT_SPLITS (default: IKL_IMAGENET). No published teacher exists: stage 1 trains the baselines
# (ResNeXt-101-32x4d, ResNet-18, ResNet-50 with CE), stage 2 distils from their seed-0 runs.
# Every evaluation logs test/acc_many, test/acc_medium, test/acc_few (>100, 20..100, <20 train images per class).
# Smoke mode: a generated ImageNet-LT tree (JPEG/PNG files, real split-file format; 8 classes, 40..3 train
# images, groups at 20/6) under $OUT/imagenet_lt, resnet8 models at 32 px, one epoch.
# Cells: configs/experiment/kd_imagenet_lt/*.yaml. Environment and the rest of smoke mode: scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TEACHERS=(kd_imagenet_lt/baseline_x101 kd_imagenet_lt/baseline_r18 kd_imagenet_lt/baseline_r50)
STUDENTS=(
  kd_imagenet_lt/kl_x101_r18 kd_imagenet_lt/ikl_x101_r18 kd_imagenet_lt/kl_x101_r50 kd_imagenet_lt/ikl_x101_r50
  kd_imagenet_lt/kl_r18_r18 kd_imagenet_lt/ikl_r18_r18 kd_imagenet_lt/kl_r50_r50 kd_imagenet_lt/ikl_r50_r50
)
export IKL_TEACHERS_LT="$RUNS"   # stage 2 finds its teachers at $RUNS/kd_imagenet_lt-baseline_<net>-s0

if [[ "$SMOKE" == 1 ]]; then
  tree="$OUT/imagenet_lt"
  [[ -f "$tree/ImageNet_LT_test.txt" ]] || run "$PYTHON" scripts/make_image_tree.py imagenet_lt "$tree" --classes 8 --most 40 --fewest 3 --test 4
  SMOKE_OVERRIDES=(
    dataset=imagenet_lt dataset.name=imagenet_lt_smoke "dataset.builder.root=$tree" "dataset.builder.split_dir=$tree"
    dataset.num_classes=8 dataset.image_size=32 dataset.builder.many_threshold=20 dataset.builder.few_threshold=6
    batch_size=16 test_batch_size=16 trainer.epochs=1 trainer.workers=0 trainer.progress=false logger.mode=disabled
    student=resnet8 teacher=resnet8 teacher.expected_acc=null
  )
else
  data="${IKL_IMAGENET:-./data/imagenet}"
  splits="${IKL_IMAGENET_LT_SPLITS:-$data}"
  [[ -d "$data/train" && -d "$data/val" ]] || die "ImageNet not found under $data (train/, val/): set IKL_IMAGENET"
  for split in train test; do
    [[ -f "$splits/ImageNet_LT_$split.txt" ]] || die "$splits/ImageNet_LT_$split.txt is missing: set IKL_IMAGENET_LT_SPLITS to the folder of the ImageNet-LT split files (jiequancui/DKL DKLv1/Imbalanced_KD-dkl/imagenet_inat/data/ImageNet_LT/)"
  done
fi

train train_kd.py "${TEACHERS[@]}" -- "$@"
train train_kd.py "${STUDENTS[@]}" -- "$@"
tables table5_kd_imagenet_lt
