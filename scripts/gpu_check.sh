#!/usr/bin/env bash
# The GPU measurements behind docs/benchmarks.md, in one go, most wanted first:
#   1. the CUDA-only tests (no host sync in the step; CUDA graphs replay and train like the default),
#   2. the benchmark at batch 64, the recipe's batch, with CUDA graphs, timing a whole
#      configs/train_apples.yaml run with them too (its `time:` line says where the run goes),
#   3. the benchmark at batch 256 (where the c/a target is set), torch.compile's default mode,
#   4. batch 64 in the default mode, to compare with 2, then batch 256 without cuDNN's autotuner
#      and with CUDA graphs, to compare with 3.
# Each part has its own time limit, the whole a budget (BUDGET seconds, default 540: parts that no
# longer fit are skipped, so the most wanted ones come back from a short lease), and a failed part does
# not stop the next. Everything is logged to LOG (default logs/gpu_check.log); each benchmark appends
# its row to docs/benchmarks.md.
#
#   bash scripts/gpu_check.sh DATA_DIR [LOG]      # DATA_DIR: the apples ImageFolder (4,495 images)
#
# PYTHON picks the interpreter (default python3).
set -uo pipefail

data=$(realpath "${1:?usage: bash scripts/gpu_check.sh DATA_DIR [LOG]}") || exit 1
log=$(realpath -m "${2:-$(dirname "$0")/../logs/gpu_check.log}")
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$(dirname "$log")"
export PYTHONUNBUFFERED=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

budget=${BUDGET:-540}
part() {  # part NAME SECONDS COMMAND...: run within its limit and what is left of the budget, logged
    local name=$1 limit=$2 started=$SECONDS left=$((budget - SECONDS))
    shift 2
    if ((left < 30)); then
        echo "=== $name: skipped, ${left} s of the budget left" | tee -a "$log"
        return
    fi
    ((limit > left)) && limit=$left
    echo "=== $name: $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$log"
}

$py -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA GPU is visible to $py; these checks need one.')" || exit 1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; $py -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee -a "$log"
bench=(scripts/benchmark.py --device cuda --size 96 --steps 300 --data "$data")
part cuda-tests 150 $py -m pytest -q -p no:cacheprovider tests/test_accel.py -k "gives_the_same_batches or syncs or cuda_graphs"
part batch64-cuda-graphs-full 300 $py "${bench[@]}" --batch 64 --compile-mode reduce-overhead --full
part batch256-default 150 $py "${bench[@]}" --batch 256 --steps 150
part batch64-default 120 $py "${bench[@]}" --batch 64
part batch256-no-cudnn-autotuner 150 $py "${bench[@]}" --batch 256 --steps 150 --cudnn-benchmark false
part batch256-cuda-graphs 150 $py "${bench[@]}" --batch 256 --steps 150 --compile-mode reduce-overhead
echo "=== done in $SECONDS s" | tee -a "$log"
