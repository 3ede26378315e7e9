#!/usr/bin/env bash
# Write scripts/constraints.txt from a venv whose suite just passed (default: the `make test-latest` venv).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-latest}
{
  echo "# Exact versions the test suite last passed with ($("$venv/bin/python" --version), torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), $(date +%F))."
  echo "# Used by scripts/bootstrap.sh for \`make demo\` and \`make test\`; \`make test-latest\` ignores it."
  echo "# torch is not pinned here: the bootstrap installs torch==2.13.0 only where no torch imports."
  echo "# Regenerate after a green \`make test-latest\`: scripts/freeze_constraints.sh"
  "$venv/bin/python" -m pip freeze --exclude-editable | grep -v -iE "^(kernel-fx|kernel_fx|torch)=="
} > scripts/constraints.txt
echo "wrote scripts/constraints.txt from $venv"
