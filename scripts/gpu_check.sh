#!/usr/bin/env bash
# The GPU measurements behind docs/benchmarks.md and docs/results.md in one go, most wanted first, sized for a short
# lease (the device tool lends 15 minutes a session and 10 a call):
#   1. cuda-tests: the CUDA-only tests (no host sync in the step; CUDA graphs, compiled or of the whole step, replay
#      and train like the plain step; a run with the captured step checkpoints and resumes),
#   2. batch64-step-graph-full: the benchmark at batch 64, the recipe's batch, with the whole step replayed as a CUDA
#      graph (train.cuda_graph), timing a whole configs/train_apples.yaml run with it too (its `time:` line says where
#      the run goes): the speed targets,
#   3. ablation-96: the reference and the best recipe at 96 px, 100 epochs (scripts/ablate.py, a section of its own
#      in docs/results.md): the quality target,
#   4. batch256-step-graph: batch 256 with the graph, where the c/a target is set,
#   5. what picks the defaults: the full run with the step eager (not compiled) but replayed; batch 256 and 64 as they
#      run by default (torch.compile's default mode); batch 64 with torch.compile's own CUDA graphs
#      (reduce-overhead); batch 256 without cuDNN's autotuner,
#   6. families-96: every family at 96 px, 100 epochs (scripts/families.py's epochs table), with what is left.
# Each part has its own time limit, the whole a budget (BUDGET seconds, default 540): parts that no longer fit are
# skipped, and a failed part does not stop the next. ONLY="name name" runs just those parts (a second call picks up
# what the first skipped). Everything is logged to LOG (default $OUT/gpu_check.log where OUT is set, as on the device
# tool's machine, else logs/gpu_check.log); with OUT set, every part ends by packing the docs the run changed (the
# benchmark rows, the results sections, the sample grids) into $OUT/gpu_check.tgz, so a lease cut short still brings
# back what finished: unpack it in the repository root.
#
#   bash scripts/gpu_check.sh DATA_DIR [LOG]      # DATA_DIR: the apples ImageFolder (4,495 images)
#
# On the device tool's machine, after `bash scripts/device_bundle.sh` here (carry: [".device_data"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device_data/wheels/*.whl &&
#   PYTHONPATH=/tmp/site bash scripts/gpu_check.sh .device_data/apples
# PYTHON picks the interpreter (default python3).
set -uo pipefail

data=$(realpath "${1:?usage: bash scripts/gpu_check.sh DATA_DIR [LOG]}") || exit 1
default_log=$(dirname "$0")/../logs/gpu_check.log
[[ -n ${OUT:-} ]] && default_log=$OUT/gpu_check.log
log=$(realpath -m "${2:-$default_log}")
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$(dirname "$log")"
export PYTHONUNBUFFERED=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
stamp=$(mktemp)  # the docs written after it are this run's

budget=${BUDGET:-540}
only=${ONLY:-}
part() {  # part NAME SECONDS COMMAND...: run within its limit and what is left of the budget, logged, packed
    local name=$1 limit=$2 started=$SECONDS left=$((budget - SECONDS))
    shift 2
    [[ -z $only || " $only " == *" $name "* ]] || return 0
    if ((left < 30)); then
        echo "=== $name: skipped, ${left} s of the budget left" | tee -a "$log"
        return
    fi
    ((limit > left)) && limit=$left
    echo "=== $name: $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$log"
    if [[ -n ${OUT:-} ]]; then
        find docs -type f -newer "$stamp" -print0 | tar czf "$OUT/gpu_check.tgz" --null -T -
    fi
}

$py -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA GPU is visible to $py; these checks need one.')" || exit 1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; $py -c "import torch; print('torch', torch.__version__)"; } 2>&1 | tee -a "$log"
bench=(scripts/benchmark.py --device cuda --size 96 --steps 300 --data "$data")
run=(--set "data.root=$data" --set output.logs_dir=/tmp/vaegen-gpu-check/logs --set output.best_dir=/tmp/vaegen-gpu-check/best)
protocol=(--device cuda --size 96 --epochs 100 --data "$data")
part cuda-tests 180 $py -m pytest -q -p no:cacheprovider tests/test_accel.py -k "gives_the_same_batches or syncs or cuda_graphs or captured"
part batch64-step-graph-full 300 $py "${bench[@]}" --batch 64 --cuda-graph --full
part ablation-96 360 $py scripts/ablate.py "${protocol[@]}" --rows "reference,best recipe" --out /tmp/vaegen-ablation-96
part batch256-step-graph 120 $py "${bench[@]}" --batch 256 --steps 150 --cuda-graph
# with the step replayed, compilation may cost more than it saves in a 100-epoch run: the same run, eager
part full-step-graph-eager 240 $py -m vaegen train --config configs/train_apples.yaml "${run[@]}" --set train.compile=false \
    --set train.cuda_graph=true --set output.run_name=gpu-check-eager
part batch256-default 120 $py "${bench[@]}" --batch 256 --steps 150
part batch64-default 120 $py "${bench[@]}" --batch 64
part batch64-reduce-overhead 120 $py "${bench[@]}" --batch 64 --compile-mode reduce-overhead
part batch256-no-cudnn-autotuner 120 $py "${bench[@]}" --batch 256 --steps 150 --cudnn-benchmark false
part families-96 600 $py scripts/families.py "${protocol[@]}" --skip budget --out /tmp/vaegen-families-96
echo "=== done in $SECONDS s" | tee -a "$log"
rm -f "$stamp"
