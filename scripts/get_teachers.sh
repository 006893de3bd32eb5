#!/usr/bin/env bash
# The published CIFAR-100 teachers of Tables 13/14: mdistiller's GitHub release "checkpoints",
# cifar_teachers.tar (a re-host of the CRD teachers), unpacked as
#   $IKL_TEACHERS/<name>_vanilla/ckpt_epoch_240.pth   (default download_ckpts/cifar_teachers)
# for the six teachers the KD cells use: resnet56 resnet110 resnet32x4 wrn_40_2 vgg13 ResNet50.
#   bash scripts/get_teachers.sh                       # download, verify, unpack
#   TAR=/path/to/cifar_teachers.tar bash scripts/get_teachers.sh     # a copy fetched elsewhere
#   IMAGENET=1 bash scripts/get_teachers.sh            # also the torchvision ImageNet teachers
#   SMOKE=1 OUT=/tmp/smoke bash scripts/get_teachers.sh   # offline: a stand-in tar of random weights
#
# What is verified:
#   1. the tar's SHA-256, against CIFAR_TEACHERS_SHA256 when it is set. The expected value is not
#      pinned in this repository: it could not be downloaded where this script was written. Fill it
#      in / verify it on first download: the script prints the SHA-256 it computed, and
#      CIFAR_TEACHERS_SHA256=<that> pins it for every later run (a mismatch then stops here).
#   2. per file, always: each of the six ckpt_epoch_240.pth exists, loads with weights_only=True
#      (no pickled code runs) and fits our architecture of that name with 100 classes strictly
#      (every key and shape); the accuracy stored in the file is printed beside the paper's.
#   3. per file, when CIFAR-100 is on disk (IKL_DATA, default ./data; no download is attempted):
#      each teacher scores the paper's accuracy (P-T13/14) +-1.0 on the test set, through
#      train_kd's own teacher check (the check every KD run repeats before it trains).
#   ImageNet (IMAGENET=1): resnet34-333f7ec4.pth and resnet50-19c8e357.pth from download.pytorch.org,
#   each checked against the SHA-256 prefix torchvision puts in the file name.
# Without network access it says so in one line and exits 1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

URL="${CIFAR_TEACHERS_URL:-https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar}"
# sha256 of cifar_teachers.tar: fill in / verified on first download (see 1. above).
CIFAR_TEACHERS_SHA256="${CIFAR_TEACHERS_SHA256:-}"
TAR="${TAR:-$OUT/downloads/cifar_teachers.tar}"
TEACHERS="${TEACHERS:-resnet56 resnet110 resnet32x4 wrn_40_2 vgg13 ResNet50}"
if [[ "$SMOKE" == 1 ]]; then
  DEST="${IKL_TEACHERS:-$OUT/cifar_teachers}"
  TEACHERS="${SMOKE_TEACHERS:-resnet56 wrn_40_2}" # small ones: the stand-in tar stays a few MB
else
  DEST="${IKL_TEACHERS:-download_ckpts/cifar_teachers}"
fi

fetch() { # URL FILE: download to FILE (atomically) or say in one line why not
  local url=$1 file=$2
  mkdir -p "$(dirname "$file")"
  if ! curl -fsSL --retry 2 --connect-timeout 20 -o "$file.part" "$url" 2>/dev/null; then
    rm -f "$file.part"
    die "cannot download $url (no network?); fetch it on a machine with access and rerun with TAR=<file> (ImageNet: put it in $(dirname "$file"))"
  fi
  mv "$file.part" "$file"
}

if [[ "$SMOKE" == 1 && ! -f "$TAR" ]]; then
  say "smoke mode: building a stand-in $TAR (random weights, the published layout) instead of downloading"
  stage="$OUT/stand_in"
  run "$PYTHON" - "$stage/cifar_teachers" $TEACHERS <<'PY'
import sys
from pathlib import Path

import torch

from ikl.models import create_model

PAPER = {"resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "wrn_40_2": 75.61, "vgg13": 74.64, "ResNet50": 79.34}
root = Path(sys.argv[1])
for name in sys.argv[2:]:
    path = root / f"{name}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = create_model(name, 100)
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": PAPER[name], "optimizer": {}}, path)
PY
  mkdir -p "$(dirname "$TAR")"
  tar -cf "$TAR" -C "$stage" cifar_teachers
fi

if [[ ! -f "$TAR" ]]; then
  say "downloading $URL"
  fetch "$URL" "$TAR"
fi

say "checking $TAR"
sha=$(sha256sum "$TAR" | cut -d' ' -f1)
if [[ -n "$CIFAR_TEACHERS_SHA256" ]]; then
  [[ "$sha" == "$CIFAR_TEACHERS_SHA256" ]] ||
    die "checksum mismatch for $TAR: sha256 $sha, expected $CIFAR_TEACHERS_SHA256 (corrupt or a different file; delete it and rerun)"
  echo "sha256 $sha matches CIFAR_TEACHERS_SHA256"
else
  echo "sha256 $sha (not pinned: check it once, then set CIFAR_TEACHERS_SHA256=$sha to pin it)"
fi

say "unpacking into $DEST"
unpack="$OUT/unpack.$$"
rm -rf "$unpack"
mkdir -p "$unpack" "$DEST"
tar -xf "$TAR" -C "$unpack"
for name in $TEACHERS; do
  found=$(find "$unpack" -type d -name "${name}_vanilla" -print -quit)
  [[ -n "$found" ]] || die "$TAR has no ${name}_vanilla/ folder; is it mdistiller's cifar_teachers.tar?"
  rm -rf "${DEST:?}/${name}_vanilla"
  mv "$found" "$DEST/${name}_vanilla"
done
rm -rf "$unpack"

say "verifying each teacher file (strict load; accuracy when CIFAR-100 is on disk)"
run "$PYTHON" - "$DEST" $TEACHERS <<'PY'
import os
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ikl.cli import train_kd
from ikl.data import build_loaders
from ikl.engine.trainer import evaluate_classifier
from ikl.errors import UserError

# One KD cell per teacher: its teacher.expected_acc is the paper's number (P-T13/14).
CELL = {
    "resnet56": "kd_cifar100/kd_res56_res20",
    "resnet110": "kd_cifar100/kd_res110_res32",
    "resnet32x4": "kd_cifar100/kd_res32x4_res8x4",
    "wrn_40_2": "kd_cifar100/kd_wrn40_2_wrn_16_2",
    "vgg13": "kd_cifar100/kd_vgg13_vgg8",
    "ResNet50": "kd_cifar100/kd_res50_mv2",
}
dest, names = Path(sys.argv[1]), sys.argv[2:]
data_root = Path(os.environ.get("IKL_DATA", "./data"))
have_data = (data_root / "cifar-100-python" / "test").is_file()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
test_loader, failed = None, []
with initialize_config_dir(config_dir=str(Path("configs").resolve()), version_base="1.3"):
    for name in names:
        path = dest / f"{name}_vanilla" / "ckpt_epoch_240.pth"
        cfg = compose(config_name="train_kd", overrides=[f"experiment={CELL[name]}", f"teacher.checkpoint={path}"])
        try:  # weights_only=True, strict: every key and shape of our architecture
            teacher = train_kd.build_teacher(cfg, 100, path)
        except UserError as exc:
            failed.append(str(exc))
            continue
        stored = torch.load(path, map_location="cpu", weights_only=True).get("accuracy")
        line = f"{name}: loads strictly; stored accuracy {stored}, paper {cfg.teacher.expected_acc}"
        if have_data:
            if test_loader is None:
                cfg.dataset.builder.download = False
                datasets = instantiate(cfg.dataset.builder)
                _, test_loader = build_loaders(datasets, batch_size=256, test_batch_size=256, workers=2)
            acc = evaluate_classifier(teacher.to(device), test_loader, device)["acc"]
            try:
                train_kd.check_teacher(cfg, acc)
                line += f"; test accuracy {acc:.2f}, within {cfg.teacher.acc_tolerance} of the paper"
            except UserError as exc:
                failed.append(str(exc))
        else:
            line += f"; test accuracy not measured (no CIFAR-100 under {data_root}; IKL_DATA=<dir> to measure)"
        print(line)
if failed:
    sys.exit("teacher check failed:\n  " + "\n  ".join(failed))
print(f"{len(names)} teachers verified in {dest}")
PY

if [[ "${IMAGENET:-0}" == 1 ]]; then
  IMNET="${IKL_TEACHERS_IMAGENET:-download_ckpts/imagenet_teachers}"
  for file in resnet34-333f7ec4.pth resnet50-19c8e357.pth; do
    if [[ ! -f "$IMNET/$file" ]]; then
      say "downloading $file"
      fetch "https://download.pytorch.org/models/$file" "$IMNET/$file"
    fi
    prefix="${file##*-}"
    prefix="${prefix%.pth}"
    sha=$(sha256sum "$IMNET/$file" | cut -d' ' -f1)
    [[ "$sha" == "$prefix"* ]] || die "checksum mismatch for $IMNET/$file: sha256 $sha does not start with $prefix"
    echo "$IMNET/$file: sha256 $sha (prefix $prefix as in its name)"
  done
fi
echo "teachers ready: IKL_TEACHERS=$DEST"
