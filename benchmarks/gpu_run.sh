#!/usr/bin/env bash
# One GPU session's work: CUDA tests, then the model benchmarks. Usage: benchmarks/gpu_run.sh OUTDIR [models...]
set -u
out=${1:?OUTDIR}; shift
export PYTHONPATH=. PYTHONUNBUFFERED=1
mkdir -p "$out"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -m pytest -q -p no:cacheprovider -m "cuda" tests/kernels tests/integrations tests/hub 2>&1 | tail -25 | tee "$out/cuda-tests.log"
fi
for model in "$@"; do
  python3 benchmarks/bench_models.py --model "$model" --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench-$model.log" | grep -v '^{'
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/gpu.txt"
