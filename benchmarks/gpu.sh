#!/usr/bin/env bash
# The accelerator checks of the README, as one script for a CUDA machine whose python3
# already has jax with CUDA (no network there):
#   benchmarks/gpu.sh OUTDIR
# Wheels of the pinned flax/optax/orbax-checkpoint/tensorboardX may wait in .whl/ (pip
# download ... -d .whl) and MNIST in $JAXAE_DATA_DIR (default .gpudata/mnist). Every step
# has its own time limit and writes OUTDIR/<step>.log; OUTDIR/gpu.tar.gz holds them all
# (updated after each step, so a run cut short still returns what it finished).
# A dry run on a CPU: EXTRA="--train-size 640 --epochs 1 --eval-k 4" ONLY="archs sweep1"
# benchmarks/gpu.sh out/dry (EXTRA goes to every sweep; ONLY: the steps to run)
set -uo pipefail
out=${1:-out/gpu}
logs=${LOGDIR:-$out/logs} # LOGDIR: keep the logs elsewhere, only the tarball in OUTDIR
mkdir -p "$out" "$logs"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} JAXAE_DATA_DIR=${JAXAE_DATA_DIR:-.gpudata}
export PYTHONUNBUFFERED=1
read -r -a extra <<<"${EXTRA:-}"
tmp=$(mktemp -d)
dirs=(--models-dir "$tmp/m" --runs-dir "$tmp/r" --no-progress)
status=0

step() { # step NAME SECONDS COMMAND...: run with a time limit, log, keep the results
  local name=$1 limit=$2 s rc
  shift 2
  [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || return 0
  s=$(date +%s)
  timeout -k 20 "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc (124: timed out) in $(($(date +%s) - s)) s" | tee -a "$logs/steps.log"
  [ -f "$tmp/m/$name/results.json" ] && cp "$tmp/m/$name/results.json" "$logs/$name.json"
  [ -f "$tmp/m/$name/latent_sweep.png" ] && cp "$tmp/m/$name/latent_sweep.png" "$logs/$name.png"
  tar -czf "$out/gpu.tar.gz" -C "$logs" .
  [ $rc -eq 0 ] || status=1
}

{
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, \
jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__)"
} 2>&1 | tee "$logs/versions.log"

# Model families: MLP and conv VAEs of every latent size side by side in one program,
# 10 epochs, test -ELBO and IW NLL (k = 1000).
step archs 240 python3 -m experiments.latent_sweep --name archs --archs mlp conv --kinds vae \
  --seeds 2 --eval-k 1000 "${dirs[@]}" "${extra[@]}"

# The main job at 36, 144, 1 and 6 members: wall time and where it goes.
step latent_sweep 120 python3 -m experiments.latent_sweep "${dirs[@]}" "${extra[@]}"
step sweep144 150 python3 -m experiments.latent_sweep --name sweep144 --seeds 12 "${dirs[@]}" \
  "${extra[@]}"
step sweep1 90 python3 -m experiments.latent_sweep --name sweep1 --kinds vae --latents 16 \
  --seeds 1 "${dirs[@]}" "${extra[@]}"
step sweep6 90 python3 -m experiments.latent_sweep --name sweep6 --latents 4 16 64 --seeds 1 \
  "${dirs[@]}" "${extra[@]}"

# Single-model throughput per architecture and the matmul peak.
step bench 120 python3 -m benchmarks.run --only archs --out "$logs/bench.json"

# The tests that train and evaluate, on the accelerator.
XLA_PYTHON_CLIENT_PREALLOCATE=false step pytest 150 python3 -m pytest -x -q --tb=short -p no:cacheprovider tests/test_train.py \
  tests/test_models.py tests/test_losses.py tests/test_evaluate.py
exit $status
