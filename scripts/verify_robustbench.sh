#!/usr/bin/env bash
# Our evaluator against the RobustBench leaderboard: eval_autoattack.py on RobustBench model-zoo
# entries (ikl/eval/robustbench.py), each of which must land on its published clean and AutoAttack
# accuracy (docs/reproduce.md, "RobustBench models"). One command where there is network:
#   pip install gdown && bash scripts/verify_robustbench.sh      # the paper's five entries
#   IDS="cifar10/Standard cifar100/Cui2023Decoupled_WRN-34-10" bash scripts/verify_robustbench.sh
#   IDS=all bash scripts/verify_robustbench.sh                   # every entry of the table
#   SMOKE=1 OUT=/tmp/smoke bash scripts/verify_robustbench.sh    # offline: stand-in weights, digits
# Weights: RobustBench's own cache layout, $RB_DIR/<dataset>/Linf/<id>.pt (default ./models, where
# robustbench.utils.load_model keeps them), fetched with gdown (RobustBench's downloader) where missing.
# Each id: standard AutoAttack, L-inf 8/255, the first 10,000 test images, bs 200, seed 0; extra
# arguments go to eval_autoattack.py (e.g. batch_size=500 device=cuda:1). The CIFAR test sets come
# from dataset.builder.root (IKL_DATA, default ./data; downloaded there when absent).
# Writes $OUT/robustbench/<dataset>/<id>/result.json and $OUT/robustbench/summary.md, prints the
# table (ours / published / difference) and exits 1 unless every id lands within the tolerance.
# Expected time: about 5.5 h (CIFAR-100) / 9.6 h (CIFAR-10) per WRN-34-10 on one GPU (PAPER.md §2.3).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PAPER_IDS="cifar100/Cui2023Decoupled_WRN-34-10 cifar100/Cui2023Decoupled_WRN-34-10_autoaug cifar100/Cui2023Decoupled_WRN-28-10 cifar10/Cui2023Decoupled_WRN-34-10 cifar10/Cui2023Decoupled_WRN-28-10"
SETTINGS=(n_ex=10000 version=standard batch_size=200 seed=0 "results_dir=$OUT/robustbench/results")
if [[ "$SMOKE" == 1 ]]; then
  RB_DIR="${RB_DIR:-$OUT/rb_models}"
  IDS="${IDS:-cifar10/Addepalli2022Efficient_RN18}" # a ResNet-18: a small stand-in file
  SETTINGS=(dataset=digits n_ex=8 batch_size=8 "evaluations=[pgd2]" device=cpu logger.mode=disabled results_dir=null)
else
  RB_DIR="${RB_DIR:-models}"
  IDS="${IDS:-$PAPER_IDS}"
fi
if [[ "$IDS" == all ]]; then
  IDS="$("$PYTHON" -c 'from ikl.eval.robustbench import ENTRIES; print(" ".join(f"{e.dataset}/{e.model_id}" for e in ENTRIES))')"
fi
RESULTS="$OUT/robustbench"

gdrive_id() { # ID: where RobustBench keeps the file on Google Drive
  "$PYTHON" -c 'import sys; from ikl.eval.robustbench import find_entry
print(find_entry("robustbench:" + sys.argv[1]).gdrive_id)' "$1"
}

for id in $IDS; do
  [[ "$id" == */* ]] || die "IDS: write <dataset>/<model id>, e.g. cifar100/Cui2023Decoupled_WRN-34-10 (got $id)"
  path="$RB_DIR/${id%%/*}/Linf/${id#*/}.pt" # RobustBench's cache layout
  if [[ ! -f "$path" && "$SMOKE" == 1 ]]; then
    say "smoke mode: a stand-in $path (random weights, RobustBench's layout) instead of downloading"
    run "$PYTHON" - "$id" "$path" <<'PY'
import sys
from pathlib import Path

import torch

from ikl.eval.robustbench import find_entry
from ikl.models import create_model

entry, path = find_entry("robustbench:" + sys.argv[1]), Path(sys.argv[2])
state = create_model(entry.model, entry.num_classes).state_dict()
path.parent.mkdir(parents=True, exist_ok=True)
torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
PY
  elif [[ ! -f "$path" ]]; then
    command -v gdown >/dev/null || die "$path is missing and gdown is not installed: pip install gdown (or put the file there)"
    say "downloading $id to $path"
    mkdir -p "$(dirname "$path")"
    gid="$(gdrive_id "$id")"
    gdown "$gid" -O "$path.part" || die "cannot download $id (no network?); fetch https://drive.google.com/uc?id=$gid to $path"
    mv "$path.part" "$path"
  fi
  say "evaluating robustbench:$id"
  run "$PYTHON" eval_autoattack.py "checkpoint=robustbench:$id" "robustbench.dir=$RB_DIR" \
    "output_dir=$RESULTS/$id" "${SETTINGS[@]}" "$@"
done

say "ours vs the leaderboard"
run "$PYTHON" - "$RESULTS" "$SMOKE" $IDS <<'PY'
import json
import sys
from pathlib import Path

from ikl.eval.robustbench import summary_table

out, smoke, ids = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
results = [json.loads((out / i / "result.json").read_text()) for i in ids]
table, passed = summary_table(results)
(out / "summary.md").write_text(table + "\n")
print(table)
print(f"\n{out / 'summary.md'}: " + ("every id within the tolerance" if passed else "NOT every id within the tolerance"))
sys.exit(0 if passed or smoke else 1)
PY
