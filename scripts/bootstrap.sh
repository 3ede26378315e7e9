#!/usr/bin/env bash
# Make .venv ready: torch (2.13.0 CPU only where no torch is importable), then kernel-fx with test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # Any other spec pulls several GB of CUDA packages; 2.13.0 resolves to the local CPU build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
stamp=.venv/.kernel_fx_installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
