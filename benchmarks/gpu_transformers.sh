#!/usr/bin/env bash
# One lease's work for the transformers benchmarks: wheels, the CUDA tests that touch them, then the
# benchmark steps named on the command line, each under its own time limit so a slow step keeps the rest.
#   benchmarks/gpu_transformers.sh OUTDIR STEP...    STEP: tests | MODEL:CALLS[:VARIANTS[:BATCHES]][@SECONDS]
#   e.g. benchmarks/gpu_transformers.sh $OUT tests llama:forward,train@300 llama:forward,train:liger,liger+inductor@150
# Everything lands in OUTDIR/work and, after each step, in OUTDIR/results.tgz (one file to carry back).
set -u
dest=${1:?OUTDIR}; shift
out=$dest/work
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1  # no network there: the tests must be hermetic under it
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/gpu.txt"
python3 -c "import torch, transformers, kernels; print(torch.__version__, transformers.__version__, kernels.__version__)" >> "$out/gpu.txt"
for step in "$@"; do
  limit=${step##*@}; [ "$limit" = "$step" ] && limit=600; spec=${step%@*}
  if [ "$spec" = tests ]; then
    timeout "$limit" python3 -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m cuda 2>&1 | tail -30 > "$out/cuda-tests.log"
    tail -3 "$out/cuda-tests.log"
    tar czf "$dest/results.tgz" -C "$out" .
    continue
  fi
  IFS=: read -r model calls variants batches <<< "$spec"
  args=(--model "$model" --calls "$calls" --out "$out" --warmup 2 --repeats 10 ${BENCH_ARGS:-})
  args+=("--tag=-${calls//,/+}${variants:+-${variants%%,*}}")
  [ -n "${variants:-}" ] && args+=(--variants "$variants")
  [ -n "${batches:-}" ] && args+=(--decode-batches "$batches")
  echo "== $spec (${limit}s)"
  timeout "$limit" python3 benchmarks/bench_transformers.py "${args[@]}" > "$out/log-$model-${calls//,/+}-${variants%%,*}.txt" 2>&1
  grep '^{' "$out"/log-"$model"-"${calls//,/+}"-"${variants%%,*}".txt | cut -c1-200
  tar czf "$dest/results.tgz" -C "$out" .
done
