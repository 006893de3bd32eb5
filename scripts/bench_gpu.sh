#!/usr/bin/env bash
# The GPU speed figures in one command, for an H100/H200 machine with PyTorch (CUDA) installed:
#
#   bash scripts/bench_gpu.sh                    # tables into results/gpu/
#   OUT=/some/dir bash scripts/bench_gpu.sh      # or into $OUT
#
# Writes into $OUT:
#   bench_train_gpu.md  scripts/bench_train.py --device cuda: images/s of IKL-KD resnet32x4 -> resnet8x4
#                       (batch 64) and IKL-AT wrn_34_10 (batch 128, 5-step PGD, AWP), fastest vs
#                       official-style configuration, and the train loaders alone
#   bench_loss_gpu.md   scripts/bench_loss.py: loss forward+backward time and memory (CPU and CUDA rows)
#   bench_train_gpu_profile.txt  torch.profiler op tables (CPU and GPU time) of one timed window per configuration
#   gpu_tests.txt       pytest -m gpu: real CUDA-graph training equals eager training (skipped without pytest)
#   nvidia-smi.txt      the GPU, driver and clocks before the runs
#   env.txt             Python, torch, CUDA and package versions
#   bench_gpu.log       everything printed, with each step's exit status and time
#
# Installs nothing. It needs python3 with torch (CUDA), torchvision, numpy, pillow, pyyaml and tqdm
# importable (no Hydra, no W&B). Where one is missing, carry wheels and name their folder:
#   WHEELS=.whl bash scripts/bench_gpu.sh
# runs `pip install --no-index --no-deps --target /tmp/ikl-site $WHEELS/*.whl` first and puts that folder
# on PYTHONPATH. Every step runs under `timeout` within a total budget (BUDGET_S, default 450 s), so the
# script ends within 8 minutes; a step that fails or times out is logged and the others still run (the
# training table is rewritten after each of its sections, so a cut run keeps what it measured). The exit
# status is non-zero if any step failed. On an H200 (torch 2.11), before the CUDA-graph and amp-attack
# configurations were added, the steps took about 15 s (checks), 160 s (bench_train, compilation
# included) and 210 s (bench_loss). The added configurations have not been timed on a GPU yet; the
# budget cuts bench_loss to its quick sizes if bench_train runs long.
set -euo pipefail

cd "$(dirname "$0")/.."
export OUT="${OUT:-results/gpu}"
PYTHON="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-450}"
mkdir -p "$OUT"
rm -f "$OUT/bench_train_gpu.md" "$OUT/bench_train_gpu_profile.txt" "$OUT/bench_loss_gpu.md" "$OUT/env.txt" "$OUT/nvidia-smi.txt"
LOG="$OUT/bench_gpu.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

START=$(date +%s)
FAILED=()

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME SECONDS CMD...: run CMD under `timeout` (at most what the budget has left), log how it ended.
step() {
  local name="$1" want="$2"
  shift 2
  local limit
  limit=$(left)
  if ((limit > want)); then limit=$want; fi
  if ((limit < 10)); then
    echo "== $name: skipped, $(left) s of the budget left"
    FAILED+=("$name (skipped)")
    return 0
  fi
  echo "== $name (limit ${limit} s): $*"
  local tic rc=0
  tic=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  echo "== $name: exit $rc after $(($(date +%s) - tic)) s"
  if ((rc != 0)); then FAILED+=("$name (exit $rc)"); fi
  return 0
}

echo "bench_gpu.sh: $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname), output in $OUT"

if [[ -n "${WHEELS:-}" ]]; then
  step "install carried wheels" 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/ikl-site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/ikl-site${PYTHONPATH:+:$PYTHONPATH}"
fi

if command -v nvidia-smi >/dev/null; then
  step "nvidia-smi" 30 bash -c "nvidia-smi >'$OUT/nvidia-smi.txt' 2>&1; nvidia-smi \
    --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit \
    --format=csv >>'$OUT/nvidia-smi.txt' 2>&1"
  cat "$OUT/nvidia-smi.txt" || true
else
  echo "nvidia-smi not found" | tee "$OUT/nvidia-smi.txt"
fi

step "environment" 60 "$PYTHON" - <<'EOF'
import os, platform, sys
import numpy, PIL, torch, torchvision, tqdm, yaml
lines = [
    f"python {platform.python_version()} ({sys.executable})",
    f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
    f"torchvision {torchvision.__version__}, numpy {numpy.__version__}, pillow {PIL.__version__}, "
    f"pyyaml {yaml.__version__}, tqdm {tqdm.__version__}",
    f"CPU cores {os.cpu_count()}",
]
if not torch.cuda.is_available():
    sys.exit("error: torch sees no CUDA device")
props = torch.cuda.get_device_properties(0)
lines.append(f"GPU {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
text = "\n".join(lines) + "\n"
open(os.path.join(os.environ["OUT"], "env.txt"), "w").write(text)
print(text, end="")
EOF

# Correctness before speed: the CUDA-graph step must train as the eager step does.
if "$PYTHON" -c "import pytest" 2>/dev/null; then
  step "gpu tests" 90 bash -c "'$PYTHON' -m pytest -q -p no:cacheprovider -m gpu tests/test_graphs.py \
    >'$OUT/gpu_tests.txt' 2>&1; rc=\$?; tail -5 '$OUT/gpu_tests.txt'; exit \$rc"
else
  echo "pytest not importable: gpu tests skipped" | tee "$OUT/gpu_tests.txt"
fi

# Training throughput: about 5 minutes (compilation included); its sections stop early on their own budgets.
step "bench_train" 330 "$PYTHON" scripts/bench_train.py --device cuda --profile --out "$OUT/bench_train_gpu.md"

# Loss benchmark (CPU and CUDA rows): the full sizes if the budget allows, else the quick ones.
if (($(left) >= 100)); then
  step "bench_loss" $(($(left) - 45)) "$PYTHON" scripts/bench_loss.py --out "$OUT/bench_loss_gpu.md"
fi
if [[ ! -s "$OUT/bench_loss_gpu.md" ]]; then
  step "bench_loss --quick" $(($(left) - 5)) "$PYTHON" scripts/bench_loss.py --quick --out "$OUT/bench_loss_gpu.md"
fi

echo "bench_gpu.sh: done in $(($(date +%s) - START)) s"
ls -l "$OUT"
if ((${#FAILED[@]})); then
  echo "failed: ${FAILED[*]}"
  exit 1
fi
