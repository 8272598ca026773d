#!/usr/bin/env bash
# README command 1: set up .venv and train the apples recipe briefly on the bundled sample
# (data/apples_sample, 300 images, 64 px, 20 epochs: about two minutes on 2 CPU cores).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec .venv/bin/vaegen train --config configs/quickstart.yaml "$@"
