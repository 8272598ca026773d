#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): set up .venv with the test extras and run the suite.
set -euo pipefail
# The gallery's browser test drives Debian's chromium. Install it where we can (root with apt-get),
# quietly, and never fail here: without a browser that one test is skipped and says why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the gallery's browser test"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }; } >/dev/null 2>&1 \
    || echo "could not install chromium; tests/test_ui_browser.py will be skipped" >&2
fi
# one pytest-xdist worker per core, at most 4 (each holds its own torch); VAEGEN_TEST_WORKERS or -n overrides it
workers() { echo "${VAEGEN_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"; }
EXTRAS=test source "$(dirname "$0")/setup.sh"
exec .venv/bin/python -m pytest -n "$(workers)" --dist loadgroup "$@"
