#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): set up .venv with the test extras and run the suite.
set -euo pipefail
EXTRAS=test source "$(dirname "$0")/setup.sh"
exec .venv/bin/python -m pytest "$@"
