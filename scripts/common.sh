# shellcheck shell=bash
# Shared by the per-table scripts (scripts/<table>.sh); sourced, never run on its own.
#
# Environment (every script):
#   OUT=outputs/reproduce   where runs, evaluations, tables and plots go. All scripts share one OUT
#                           by default, so a cell used by two tables (e.g. at_cifar100/ikl_at in
#                           Tables 1, 2, 7-11) is trained once; the second script finds it done.
#                           SMOKE=1 without OUT: outputs/smoke/<script> (never the folder real runs
#                           resume from).
#   SEEDS=0,1,2             Hydra sweep over seeds (the paper reports the mean of 3 trials).
#   SMOKE=1                 a few steps of every cell on bundled data (see "Smoke mode" below).
#   PYTHON=python           the interpreter.
#   LAUNCHER="$PYTHON"      what starts the training entry points, e.g. "torchrun --nproc_per_node=8"
#                           (DDP on one node; each job of the multirun then runs on every rank).
#   TABLES_DIR, PLOTS_DIR   where make_tables.py writes (default $OUT/tables, $OUT/plots). Nothing
#                           is written into tracked folders: results/ holds committed reference
#                           tables only (copy a finished table there by hand to publish it).
# Extra arguments to a script are passed to its training runs as Hydra overrides, e.g.
#   bash scripts/at_cifar100.sh trainer.amp=bf16 trainer.loader=device
#   bash scripts/at_cifar100.sh hydra/launcher=slurm        # SLURM array, see docs/reproduce.md
#
# Layout: every run lives in $OUT/runs/<run_name> (run_name = the cell with "/" -> "-", plus -s<seed>,
# set in each configs/experiment file). Runs use resume=true, so rerunning a script continues
# unfinished runs and only re-summarises finished ones.
#
# Smoke mode (SMOKE=1): the same experiment files are selected, with overrides on top that shrink
# them: data set digits (64 train / 32 test images), one epoch, resnet8 models (teachers auto-trained
# for one epoch on digits), W&B off, PGD monitor on 16 images, one seed; evaluations use AutoAttack
# APGD-CE on 16 images. It proves that the scripts, every experiment file they name and the table
# builder work end to end; the numbers mean nothing.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SMOKE="${SMOKE:-0}"
PYTHON="${PYTHON:-python}"
read -r -a LAUNCH <<<"${LAUNCHER:-$PYTHON}"
SCRIPT_NAME="$(basename "${BASH_SOURCE[1]:-$0}" .sh)"
if [[ -z "${OUT:-}" ]]; then
  # a smoke run has its own folder: its one-epoch runs must never be what a real run resumes
  if [[ "$SMOKE" == 1 ]]; then OUT="outputs/smoke/$SCRIPT_NAME"; else OUT="outputs/reproduce"; fi
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
RUNS="$OUT/runs"

TABLES_DIR="${TABLES_DIR:-$OUT/tables}"
PLOTS_DIR="${PLOTS_DIR:-$OUT/plots}"

if [[ "$SMOKE" == 1 ]]; then
  SEEDS="${SEEDS:-0}"
  # Auto-trained digits teachers are cached under OUT, not in ~/.cache.
  export IKL_CACHE="${IKL_CACHE:-$OUT/cache}"
  # Tiny models: one thread per process is faster, and two smoke scripts may share two cores.
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
  SEEDS="${SEEDS:-0,1,2}"
fi
export HYDRA_FULL_ERROR="${HYDRA_FULL_ERROR:-0}"

SMOKE_COMMON=(
  dataset=digits
  dataset.builder.max_train_samples=64
  dataset.builder.max_test_samples=32
  dataset.builder.augment=crop
  batch_size=32
  test_batch_size=32
  trainer.epochs=1
  trainer.workers=0
  trainer.progress=false
  logger.mode=disabled
)
KD_SMOKE=(
  "${SMOKE_COMMON[@]}"
  student=resnet8
  teacher=resnet8
  teacher.checkpoint=null
  teacher.expected_acc=null
  teacher.auto_train_epochs=1
)
AT_SMOKE=(
  "${SMOKE_COMMON[@]}"
  model=resnet8
  monitor.samples=16
  monitor.steps=2
  compare_to_ce=false
)
EVAL_SMOKE=(dataset=digits n_ex=16 batch_size=16 version=custom "attacks=[apgd-ce]" device=cpu logger.mode=disabled results_dir=null)

say() { printf '\n==> %s\n' "$*"; }
run() {
  printf '+ %s\n' "$*"
  "$@"
}
die() {
  printf '%s: %s\n' "$(basename "$0")" "$*" >&2
  exit 1
}

join_by_comma() {
  local IFS=,
  echo "$*"
}

# run_dir CELL SEED: where the run of CELL with SEED lives (the run_name convention of the cells).
run_dir() { echo "$RUNS/${1//\//-}-s$2"; }

# train ENTRY CELL... [-- OVERRIDE...]: one Hydra multirun over CELL x SEEDS, resumable. In smoke mode the
# KD_SMOKE / AT_SMOKE overrides come first, unless the script sets its own array SMOKE_OVERRIDES.
train() {
  local entry=$1
  shift
  local cells=() extra=()
  while (($#)); do
    if [[ "$1" == -- ]]; then
      shift
      extra=("$@")
      break
    fi
    cells+=("$1")
    shift
  done
  local smoke=()
  if [[ "$SMOKE" == 1 ]]; then
    if [[ -n "${SMOKE_OVERRIDES+set}" ]]; then
      smoke=(${SMOKE_OVERRIDES[@]+"${SMOKE_OVERRIDES[@]}"}) # a script's own smoke data (generated trees)
    elif [[ "$entry" == train_kd.py ]]; then
      smoke=("${KD_SMOKE[@]}")
    else
      smoke=("${AT_SMOKE[@]}")
    fi
  fi
  say "training ${#cells[@]} cell(s) x seeds {$SEEDS} with $entry -> $RUNS"
  # shellcheck disable=SC2016  # ${run_name} is a Hydra interpolation, not a shell variable
  run "${LAUNCH[@]}" "$entry" -m "experiment=$(join_by_comma "${cells[@]}")" "seed=$SEEDS" resume=true \
    "out_dir=$OUT" "hydra.sweep.dir=$RUNS" 'hydra.sweep.subdir=${run_name}' \
    ${smoke[@]+"${smoke[@]}"} ${extra[@]+"${extra[@]}"}
}

# evaluate NAME DATASET EVALUATIONS RUN_DIR... [-- OVERRIDE...]: eval_autoattack.py over run dirs
# (weights: the run's ema_epoch.pt, the official swa.py model). Full mode: standard AutoAttack,
# L-inf 8/255, the first 10000 test images, bs 200, seed 0 (PAPER.md §2.3).
evaluate() {
  local name=$1 dataset=$2 evaluations=$3
  shift 3
  local dirs=() extra=()
  while (($#)); do
    if [[ "$1" == -- ]]; then
      shift
      extra=("$@")
      break
    fi
    dirs+=("$1")
    shift
  done
  # result.json lands in <run dir>/eval_autoattack/<tag>/ (what make_tables.py reads); its copy under OUT
  local settings=("dataset=$dataset" n_ex=10000 version=standard batch_size=200 "results_dir=$OUT/eval_autoattack/results")
  if [[ "$SMOKE" == 1 ]]; then settings=("${EVAL_SMOKE[@]}"); fi
  say "evaluating ${#dirs[@]} checkpoint(s): $evaluations"
  run "$PYTHON" eval_autoattack.py -m "checkpoint=$(join_by_comma "${dirs[@]}")" "evaluations=$evaluations" \
    "${settings[@]}" "hydra.sweep.dir=$OUT/eval_sweeps/$name" ${extra[@]+"${extra[@]}"}
}

# eval_dirs CELL...: the run dirs to evaluate (every seed; in smoke mode only the first cell's
# first seed, since AutoAttack dominates the smoke time and one run proves the path).
eval_dirs() {
  local cell seed
  local -a seeds
  IFS=, read -r -a seeds <<<"$SEEDS"
  if [[ "$SMOKE" == 1 ]]; then
    run_dir "$1" "${seeds[0]}"
    return
  fi
  for cell in "$@"; do
    for seed in "${seeds[@]}"; do run_dir "$cell" "$seed"; done
  done
}

# tables NAME...: build the named tables (and their plots) from every run under $RUNS.
tables() {
  say "tables: $*"
  run "$PYTHON" scripts/make_tables.py --runs "$RUNS" --out "$TABLES_DIR" --plots "$PLOTS_DIR" --tables "$@"
}
