#!/usr/bin/env bash
# The GPU measurements behind docs/benchmarks.md, in one go, most wanted first:
#   1. the CUDA-only tests (no host sync in the step; CUDA graphs, compiled or of the whole step,
#      replay and train like the plain step; a run with the captured step checkpoints and resumes),
#   2. the benchmark at batch 64, the recipe's batch, with the whole step replayed as a CUDA graph
#      (train.cuda_graph), timing a whole configs/train_apples.yaml run with it too (its `time:` line
#      says where the run goes),
#   3. the same full run with the step eager (not compiled) but replayed, as `vaegen train` (no benchmark rows),
#   4. the benchmark at batch 256 with the graph (where the c/a target is set), then batch 256 and batch 64 as they run
#      by default (torch.compile's default mode), to compare with 2 and 3,
#   5. batch 64 with torch.compile's own CUDA graphs (reduce-overhead), batch 256 without cuDNN's autotuner.
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
part cuda-tests 180 $py -m pytest -q -p no:cacheprovider tests/test_accel.py -k "gives_the_same_batches or syncs or cuda_graphs or captured"
part batch64-step-graph-full 300 $py "${bench[@]}" --batch 64 --cuda-graph --full
# with the step replayed, compilation may cost more than it saves in a 100-epoch run: the same run, eager
part full-step-graph-eager 240 $py -m vaegen train --config configs/train_apples.yaml --set "data.root=$data" --set train.compile=false \
    --set train.cuda_graph=true --set output.run_name=gpu-check-eager --set output.logs_dir=/tmp/vaegen-gpu-check/logs \
    --set output.best_dir=/tmp/vaegen-gpu-check/best
part batch256-step-graph 120 $py "${bench[@]}" --batch 256 --steps 150 --cuda-graph
part batch256-default 120 $py "${bench[@]}" --batch 256 --steps 150
part batch64-default 120 $py "${bench[@]}" --batch 64
part batch64-reduce-overhead 120 $py "${bench[@]}" --batch 64 --compile-mode reduce-overhead
part batch256-no-cudnn-autotuner 120 $py "${bench[@]}" --batch 256 --steps 150 --cudnn-benchmark false
echo "=== done in $SECONDS s" | tee -a "$log"
