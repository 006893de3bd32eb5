#!/usr/bin/env bash
# Paper Table 15: ImageNet KD with a strong recipe, BEiT-L/16 (timm, pretrained) -> ResNet-50: KD, DKD, IKL-KD.
#   bash scripts/kd_strong.sh
#   LAUNCHER="torchrun --nproc_per_node=8" bash scripts/kd_strong.sh   # global batch 2048, as VanillaKD's 8 x 256
#   SMOKE=1 OUT=/tmp/smoke bash scripts/kd_strong.sh
# Needs ImageNet under IKL_IMAGENET (train/, val/) and the BEiT-L weights: timm loads them from the Hugging Face
# cache ($HF_HOME/hub, downloaded on first use when the network allows) or from IKL_BEIT_WEIGHTS=<local file>.
# Recipe: timm's RSB A2 with KD as VanillaKD runs it (configs/recipe/kd_imagenet_a2.yaml; docs/reproduce.md).
# Smoke mode: a generated ImageFolder tree (JPEG/PNG, 6 classes) under $OUT/imagenet, student timm/test_resnet,
# teacher timm/test_vit.r160_in1k (160 px, mean/std 0.5) loaded from a state-dict file written here (the
# local-file path; its inputs are mapped from the student's 32-px ImageNet-normalised batches), one epoch.
# Cells: configs/experiment/kd_strong/*.yaml. Environment and the rest of smoke mode: scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CELLS=(kd_strong/kd_beitl_res50 kd_strong/dkd_beitl_res50 kd_strong/ikl_beitl_res50)

if [[ "$SMOKE" == 1 ]]; then
  tree="$OUT/imagenet"
  weights="$OUT/test_vit_weights.pth"
  [[ -d "$tree/val" ]] || run "$PYTHON" scripts/make_image_tree.py image_folder "$tree" --classes 6 --train 6 --val 3
  [[ -f "$weights" ]] || run "$PYTHON" -c "import sys, timm, torch; torch.manual_seed(0); torch.save(timm.create_model('test_vit.r160_in1k', num_classes=6).state_dict(), sys.argv[1])" "$weights"
  SMOKE_OVERRIDES=(
    dataset=imagenet dataset.name=imagenet_smoke "dataset.builder.train_root=$tree/train" "dataset.builder.val_root=$tree/val"
    dataset.num_classes=6 dataset.image_size=32 dataset.builder.image_size=32
    batch_size=8 test_batch_size=8 trainer.epochs=1 trainer.workers=0 trainer.progress=false logger.mode=disabled
    student=timm_resnet50 teacher=timm_beit_large student.name=timm/test_resnet teacher.name=timm/test_vit.r160_in1k "teacher.kwargs.pretrained=$weights" teacher.expected_acc=null
  )
else
  data="${IKL_IMAGENET:-./data/imagenet}"
  [[ -d "$data/train" && -d "$data/val" ]] || die "ImageNet not found under $data (train/, val/): set IKL_IMAGENET"
fi

train train_kd.py "${CELLS[@]}" -- "$@"
tables table15_kd_strong
