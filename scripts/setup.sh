# Sourced by quickstart.sh and test.sh: a virtual environment in .venv with vaegen installed
# editable (plus EXTRAS, e.g. "test"). Re-running it only installs what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "vaegen needs Python 3.10 or newer; set PYTHON=/path/to/python3.11" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
spec="."
[ -n "${EXTRAS:-}" ] && spec=".[${EXTRAS}]"
echo "installing vaegen into .venv (torch is the big one: a few minutes the first time)"
.venv/bin/python -m pip install --quiet --editable "$spec"
.venv/bin/python -c 'import vaegen, torch; print(f"vaegen {vaegen.__version__}, torch {torch.__version__}")'
