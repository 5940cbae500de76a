#!/usr/bin/env bash
# The benchmarks on a CUDA machine whose python3 already has jax with CUDA (no network there).
#   benchmarks/gpu.sh OUTDIR
# Wheels of the pinned flax/optax/orbax-checkpoint/tensorboardX may wait in .whl/ (pip
# download ... -d .whl) and MNIST in $JAXAE_DATA_DIR (default .gpudata/mnist).
set -uo pipefail
out=${1:-out/gpu}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} JAXAE_DATA_DIR=${JAXAE_DATA_DIR:-.gpudata}
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import jax, flax, optax, orbax.checkpoint, torch; print('jax', jax.__version__, \
jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
tmp=$(mktemp -d)
dirs=(--models-dir "$tmp/m" --runs-dir "$tmp/r" --no-progress)
timeout 120 python3 -m jaxae.train --epochs 1 --train-size 2560 --run smoke "${dirs[@]}" || exit 1
timeout "${BENCH_TIMEOUT:-450}" python3 -m benchmarks.run --out "$out/results_gpu.json" 2>&1 |
  tee "$out/bench.log"
bench=$?
# The README's main job, end to end (training, per-epoch evaluation, checkpoints, figures).
s=$(date +%s)
timeout "${SWEEP_TIMEOUT:-240}" python3 -m experiments.latent_sweep "${dirs[@]}" 2>&1 |
  tee "$out/latent_sweep.log"
sweep=$?
echo "latent_sweep wall: $(($(date +%s) - s)) s" | tee -a "$out/latent_sweep.log"
cp "$tmp"/m/latent_sweep/{results.json,latent_sweep.png} "$out"/ 2>/dev/null
echo "exit status: benchmark $bench, latent sweep $sweep (124: timed out)"
exit $((bench || sweep))
