#!/usr/bin/env bash
# Generated-data adversarial training: the synthetic-data rows of paper Tables 2 and 3 (CIFAR-100 + 50M,
# CIFAR-10 + 20M), Table 11's IKL-synthetic row, Table 12's generated-data row, and the README's 1M rows,
# for IKL-AT and the TRADES baseline (Wang et al. 2023), WRN-28-10-swish with the DM-AT recipe.
#   bash scripts/at_generated.sh                                 # 8 cells x SEEDS (default: one seed), then AutoAttack
#   CELLS="at_generated/ikl_at_cifar100_50m" bash scripts/at_generated.sh    # a subset of the cells
#   FETCH=1 bash scripts/at_generated.sh                         # first download DM-AT's .npz files that are missing
#   SMOKE=1 OUT=/tmp/smoke bash scripts/at_generated.sh
# Cells: configs/experiment/at_generated/*.yaml (recipe: configs/recipe/at_dm_at.yaml). Environment and smoke
# mode: scripts/common.sh. The published rows are single runs, so SEEDS defaults to 0 here.
# Generated data (DM-AT's EDM images, https://huggingface.co/datasets/P2333/DM-Improves-AT), read where they lie,
# memory-mapped, parts never merged: $IKL_GENERATED (default ./edm_data)/cifar10/{1m,20m_part1,20m_part2}.npz and
# cifar100/{1m,50m_part1..4}.npz (about 3 GB per million images). Evaluation: ema_iter.pt (DM-AT's weight average).
# Smoke mode: the real set is the bundled digits data and the generated set two small .npz parts in DM-AT's format
# (written under $OUT), shared by every cell; one epoch of a few steps per cell; AutoAttack on the first cell only.
set -euo pipefail
SEEDS="${SEEDS:-0}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ALL_CELLS=(
  at_generated/ikl_at_cifar100_50m at_generated/ikl_at_cifar100_1m
  at_generated/trades_cifar100_50m at_generated/trades_cifar100_1m
  at_generated/ikl_at_cifar10_20m at_generated/ikl_at_cifar10_1m
  at_generated/trades_cifar10_20m at_generated/trades_cifar10_1m
)
read -r -a CELLS <<<"${CELLS:-${ALL_CELLS[*]}}"
GENERATED="${IKL_GENERATED:-edm_data}"
HUB="https://huggingface.co/datasets/P2333/DM-Improves-AT/resolve/main"

# files CELL...: the .npz files the cells read (relative to $GENERATED)
files() {
  local cell
  for cell in "$@"; do
    case "$cell" in
      *cifar100_50m) echo cifar100/50m_part{1,2,3,4}.npz | tr ' ' '\n' ;;
      *cifar10_20m) echo cifar10/20m_part{1,2}.npz | tr ' ' '\n' ;;
      *cifar100_1m) echo cifar100/1m.npz ;;
      *cifar10_1m) echo cifar10/1m.npz ;;
      *) die "unknown cell $cell" ;;
    esac
  done | sort -u
}

if [[ "$SMOKE" == 1 ]]; then
  say "smoke data: two .npz parts in DM-AT's format under $OUT/generated"
  mkdir -p "$OUT/generated"
  run "$PYTHON" - "$OUT/generated" <<'EOF'
import sys
import numpy as np

# uint8 N x 32 x 32 x 3 images (smooth random blobs) and int64 labels 0..9, as DM-AT's np.savez files
rng = np.random.default_rng(0)
coarse = rng.integers(0, 256, size=(192, 8, 8, 3), dtype=np.uint8)
images = coarse.repeat(4, axis=1).repeat(4, axis=2)
labels = rng.integers(0, 10, size=192).astype(np.int64)
for part, rows in (("part1", slice(0, 128)), ("part2", slice(128, 192))):
    np.savez(f"{sys.argv[1]}/smoke_{part}.npz", image=images[rows], label=labels[rows])
EOF
  kept=()
  for option in "${AT_SMOKE[@]}"; do [[ "$option" == dataset=* ]] || kept+=("$option"); done
  AT_SMOKE=(dataset=digits_generated "dataset.builder.path=[$OUT/generated/smoke_part1.npz,$OUT/generated/smoke_part2.npz]" "${kept[@]}")
else
  missing=()
  while read -r file; do [[ -f "$GENERATED/$file" ]] || missing+=("$file"); done < <(files "${CELLS[@]}")
  if ((${#missing[@]})) && [[ "${FETCH:-0}" == 1 ]]; then
    for file in "${missing[@]}"; do
      say "downloading $HUB/$file"
      mkdir -p "$(dirname "$GENERATED/$file")"
      run curl -fL --retry 3 -C - -o "$GENERATED/$file.partial" "$HUB/$file" || die "cannot download $HUB/$file (no network?)"
      mv "$GENERATED/$file.partial" "$GENERATED/$file"
    done
  elif ((${#missing[@]})); then
    die "missing generated data under $GENERATED: ${missing[*]}; FETCH=1 downloads them from $HUB, or set IKL_GENERATED"
  fi
  export IKL_GENERATED="$GENERATED"
fi

train train_at.py "${CELLS[@]}" -- "$@"
c100=() c10=()
for cell in "${CELLS[@]}"; do
  if [[ "$cell" == *cifar100_* ]]; then c100+=("$cell"); else c10+=("$cell"); fi
done
# Table 11 adds PGD-k / CW-k for CIFAR-100 + 50M; the weights are DM-AT's per-iteration EMA (ema_iter.pt).
if ((${#c100[@]})); then
  mapfile -t DIRS < <(eval_dirs "${c100[@]}")
  evaluate at_generated_cifar100 cifar100 "[autoattack,pgd10,pgd20,cw10,cw20]" "${DIRS[@]}" -- weights=ema_iter
fi
if ((${#c10[@]})) && { [[ "$SMOKE" != 1 ]] || ((${#c100[@]} == 0)); }; then  # smoke: one evaluation proves the path
  mapfile -t DIRS < <(eval_dirs "${c10[@]}")
  evaluate at_generated_cifar10 cifar10 "[autoattack]" "${DIRS[@]}" -- weights=ema_iter
fi
tables table2_at_cifar100_generated table3_at_cifar10_generated table11_attacks table12_robustbench
