#!/usr/bin/env bash
# Make a venv ready: torch (2.13.0 CPU only where no torch is importable), then kernel-fx with test extras.
#   scripts/bootstrap.sh                 .venv with the pinned versions of scripts/constraints.txt
#   scripts/bootstrap.sh --latest DIR    DIR with the newest releases (for `make test-latest`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=.venv
constraints=(-c scripts/constraints.txt)
upgrade=()
if [ "${1:-}" = "--latest" ]; then
  venv=${2:?usage: bootstrap.sh --latest DIR}
  constraints=()
  upgrade=(--upgrade --upgrade-strategy eager)
fi
if [ ! -x "$venv/bin/python" ]; then
  "$PY" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  # Any other spec pulls several GB of CUDA packages; 2.13.0 resolves to the local CPU build.
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
fi
stamp=$venv/.kernel_fx_installed
if [ ${#upgrade[@]} -gt 0 ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/constraints.txt -nt "$stamp" ]; then
  # The installed torch satisfies the project's range, so neither mode replaces it.
  "$venv/bin/python" -m pip install -q "${upgrade[@]}" "${constraints[@]}" -e ".[test]" "torch==$("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
  touch "$stamp"
fi
