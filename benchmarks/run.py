"""Speed and memory benchmarks (not tests). Prints a table and writes benchmarks/results.json.

    python -m benchmarks.run                 # everything (about 12 minutes on 2 CPU cores)
    python -m benchmarks.run --only sweep    # the 6-member sweep vs six separate runs
    benchmarks/gpu.sh OUTDIR                 # on a CUDA machine: this, then the latent sweep

Ratios are measured inside one run, with the compared programs interleaved, because the
machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECTIONS = (
    "peak",
    "single",
    "torch",
    "sweep",
    "scaling",
    "ablation",
    "mainjob",
    "archs",
    "iw",
    "rss",
    "members",
)
LATENTS = (2, 4, 8, 16, 32, 64)
HIDDEN = (512, 256)  # every benchmarked model is 784-512-256-latent


def train_flops(features: int, hidden, latent: int, kind: str = "vae") -> float:
    """Matmul FLOPs of one training example: forward (2 per MAC) times 3 for the backward."""
    widths = [features, *hidden]
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))  # encoder
    macs += hidden[-1] * latent * (2 if kind == "vae" else 1)  # heads
    dec = [latent, *reversed(hidden), features]
    macs += sum(a * b for a, b in zip(dec[:-1], dec[1:], strict=True))
    return 3 * 2 * macs


def conv_train_flops(image_shape, hidden, latent: int, kind: str = "vae", channels=(32, 64)):
    """FLOPs of one training example of the conv pair (``arch="conv"``): each stride-2
    3x3 convolution costs out-positions x 9 x in x out MACs; its mirror, a sub-pixel
    convolution, costs in-positions x 9 x in x 4*out; dense layers as above."""
    h, w, c = image_shape
    chans, side, macs = [c, *channels], (h, w), 0
    for cin, cout in zip(chans[:-1], chans[1:], strict=True):
        side = (side[0] // 2, side[1] // 2)
        macs += side[0] * side[1] * 9 * cin * cout  # the encoder's convolution
        macs += side[0] * side[1] * 9 * cout * 4 * cin  # the decoder's sub-pixel mirror
    widths = [side[0] * side[1] * channels[-1], *hidden]
    macs += 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    macs += widths[-1] * latent * (2 if kind == "vae" else 1) + latent * widths[-1]
    return 3 * 2 * macs


def peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """Best-of-3 float32 matmul GFLOP/s of an n x n product in JAX (XLA's default precision)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            r = f(a)
        r.block_until_ready()
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best / 1e9


def _program_speed(prog, images, *, steps: int, batch: int, chunk: int = 50) -> float:
    """Steady-state examples/s of a Program's scanned step (compiled beforehand)."""
    import jax
    import jax.numpy as jnp

    from jaxae.keys import data_keys
    from jaxae.step import epoch_batches, make_chunk

    dk = data_keys(0)
    idx = epoch_batches(dk["perm"], 0, images.shape[0], batch)[:chunk]
    f = jax.jit(make_chunk(prog.step, binarize_key=dk["binarize"]), donate_argnums=0)
    state, m = f(prog.state, prog.hyper, images, idx, jnp.int32(0))
    jax.block_until_ready(m)
    t = time.perf_counter()
    for i in range(steps // chunk):
        state, m = f(state, prog.hyper, images, idx, jnp.int32(i * chunk))
    jax.block_until_ready(m)
    return (steps // chunk) * chunk * batch / (time.perf_counter() - t)


def one_model(cfg, tcfg, tx=None):
    """One unstacked model's ``state``, ``hyper`` and ``step`` (what a sweep stacks and
    vmaps), with optimiser ``tx`` (default: the project's Adam)."""
    from types import SimpleNamespace

    from jaxae.keys import model_keys
    from jaxae.models import Model
    from jaxae.step import init_state, make_optimizer, model_step
    from jaxae.sweep import model_hyper

    tx = tx or make_optimizer(tcfg)
    return SimpleNamespace(
        state=init_state(cfg, tx, model_keys(tcfg.seed)["init"]),
        hyper=model_hyper(cfg, tcfg.seed, tcfg=tcfg),
        step=model_step(Model(cfg), tx, binarize=tcfg.binarize),
    )


def single(images, peak, *, steps: int = 400, rounds: int = 3) -> dict:
    """The VAE 784-512-256-20 at batch 128: examples/s, GFLOP/s and % of the matmul peak.

    Best of ``rounds`` (like the peak). Two ablations, interleaved, say where the step's
    time goes: the same model on grey pixels (no dynamic binarization), and on grey pixels
    with plain SGD instead of Adam. The shares are fractions of the real step's time.
    """
    import optax

    from jaxae.config import ModelConfig, TrainConfig

    cfg = ModelConfig(hidden=HIDDEN, latent=20)

    def program(variant):
        tcfg = TrainConfig(binarize=variant == "real")
        # plain SGD at unit rate: the step scales by the member's rate
        return one_model(cfg, tcfg, optax.sgd(1.0) if variant == "grey_sgd" else None)

    runs = {"real": [], "grey": [], "grey_sgd": []}
    for _ in range(rounds):
        for v in runs:
            runs[v].append(_program_speed(program(v), images, steps=steps, batch=128))
    speed, grey, sgd = (max(runs[v]) for v in runs)
    flops = train_flops(784, cfg.hidden, 20)
    gflops = speed * flops / 1e9
    return {
        "examples_per_s": speed,
        "gflops": gflops,
        "pct_of_peak": 100 * gflops / peak,
        "grey_examples_per_s": grey,
        "grey_sgd_examples_per_s": sgd,
        "binarize_share": 1 - speed / grey,
        "adam_share": speed / grey - speed / sgd,
        "rest_pct_of_peak": 100 * sgd * flops / 1e9 / peak,
    }


def versus_torch(images, *, rounds: int = 3, steps: int = 300) -> dict:
    """jaxae vs an idiomatic PyTorch loop of the same model, interleaved, best of rounds."""
    from benchmarks.torch_vae import torch_throughput
    from jaxae.config import ModelConfig, TrainConfig

    host = __import__("numpy").asarray(images)
    cfg = ModelConfig(hidden=HIDDEN, latent=20)
    device = "cuda" if _platform() == "gpu" else "cpu"
    jx, pt = [], []
    for _ in range(rounds):
        jx.append(_program_speed(one_model(cfg, TrainConfig()), images, steps=steps, batch=128))
        pt.append(torch_throughput(host, steps=steps, device=device))
    import torch

    return {
        "jaxae_examples_per_s": max(jx),
        "torch_examples_per_s": max(pt),
        "ratio": max(jx) / max(pt),
        "torch": torch.__version__,
        "torch_device": device,
        "torch_threads": torch.get_num_threads(),
    }


def sweep_vs_separate(*, epochs: int = 1) -> dict:
    """A 6-member latent sweep vs six standalone runs of the same configs and steps.

    Measured two ways, both end to end (data, compile, training, per-epoch evaluation,
    checkpoints): in one warm process (a tiny run first pays the one-time imports; JAX's
    compilation caches are cleared before each timed run, so that no run reuses another's
    compiled functions, as none could across processes), and as the commands a user would
    type, ``python -m jaxae.train`` six times vs one ``python -m experiments.latent_sweep``
    (which also evaluates and draws its figures).
    """
    import jax

    from jaxae.config import Member, ModelConfig, SweepConfig, TrainConfig
    from jaxae.runner import run
    from jaxae.sweep import single_program, sweep_program

    tcfg = TrainConfig(epochs=epochs)
    cfgs = [ModelConfig(hidden=HIDDEN, latent=k) for k in LATENTS]
    with tempfile.TemporaryDirectory() as tmp:
        kw = {"models_dir": Path(tmp) / "m", "runs_dir": Path(tmp) / "r", "progress": False}
        warm = TrainConfig(epochs=1, train_size=1280)
        run(single_program(cfgs[0], warm), warm, "warmup", **kw)
        jax.clear_caches()
        t = time.perf_counter()
        res = run(
            sweep_program(SweepConfig(tuple(Member(c, 0) for c in cfgs), tcfg)), tcfg, "sweep", **kw
        )
        sweep_s = time.perf_counter() - t
        sweep_speed = res["timing"]["examples_per_s"]
        sep_s, sep_train_s = 0.0, 0.0
        for c in cfgs:
            jax.clear_caches()
            t = time.perf_counter()
            r = run(single_program(c, tcfg), tcfg, f"single{c.latent}", **kw)
            sep_s += time.perf_counter() - t
            sep_train_s += r["timing"]["train_s"]
        cli_sweep, cli_sep = _cli_times(Path(tmp), epochs)
    steps = res["steps"]
    sep_speed = steps * tcfg.batch_size / sep_train_s * len(cfgs)  # member-examples/s
    return {
        "members": len(cfgs),
        "steps": steps,
        "sweep_wall_s": sweep_s,
        "separate_wall_s": sep_s,
        "wall_ratio": sweep_s / sep_s,
        "cli_sweep_wall_s": cli_sweep,
        "cli_separate_wall_s": cli_sep,
        "cli_wall_ratio": cli_sweep / cli_sep,
        "sweep_member_examples_per_s": sweep_speed * len(cfgs),
        "separate_member_examples_per_s": sep_speed,
        "steady_ratio": sep_speed / (sweep_speed * len(cfgs)),
    }


def _cli_times(tmp: Path, epochs: int) -> tuple[float, float]:
    """Wall time of the sweep command and of the six single-model commands."""
    out = [
        "--epochs",
        str(epochs),
        "--no-progress",
        "--models-dir",
        str(tmp / "cm"),
        "--runs-dir",
        str(tmp / "cr"),
    ]

    def timed(*args):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", *args, *out], check=True, capture_output=True)
        return time.perf_counter() - t

    sweep = timed(
        "experiments.latent_sweep",
        "--kinds",
        "vae",
        "--seeds",
        "1",
        "--latents",
        *map(str, LATENTS),
        "--quality-samples",  # jaxae.train scores no samples either
        "0",
    )
    separate = sum(timed("jaxae.train", "--latent", str(k), "--run", f"s{k}") for k in LATENTS)
    return sweep, separate


def latent_members(m: int, *, largest_first: bool = False) -> tuple:
    """m members of the latent sweep (784-512-256, latents 2..64, then the next seed)."""
    from jaxae.config import Member, ModelConfig

    lat = LATENTS[::-1] if largest_first else LATENTS
    return tuple(
        Member(ModelConfig(hidden=HIDDEN, latent=lat[i % len(lat)]), i // len(lat))
        for i in range(m)
    )


def scaling(images, *, members=(1, 6, 12, 36), steps: int = 100) -> dict:
    """Steady-state member-examples/s of sweeps of growing size (latents 2..64 x seeds).

    On a CPU the members share the cores, so this stays about flat; on an accelerator a
    bigger program fills the device and the throughput grows with the member count.
    """
    from jaxae.config import SweepConfig, TrainConfig
    from jaxae.sweep import sweep_program

    tcfg = TrainConfig()
    rows = {}
    for m in members:
        ms = latent_members(m)
        speed = _program_speed(sweep_program(SweepConfig(ms, tcfg)), images, steps=steps, batch=128)
        rows[str(m)] = {"member_examples_per_s": speed * m, "steps_per_s": speed / 128}
    return rows


def sweep_ablation(images, peak: float, *, members=(1, 6, 36), steps: int = 100, rounds=2) -> dict:
    """Why member throughput falls as a sweep grows: the sweep's step against variants
    that each remove one cost, at each member count, interleaved, best of ``rounds``.

    Variants: ``full`` (the real step); ``sgd`` (plain SGD: no Adam moments to read and
    write); ``grey`` (no dynamic binarization of the shared batch); ``no_noise`` (zeros
    instead of the per-column latent noise draws); ``matmuls`` (the step's matrix
    products alone, ``matmuls_only``: the ceiling). % of peak counts the FLOPs the padded
    members execute (every member of a group at the group's latent size).
    """
    import jax.numpy as jnp
    import optax

    import jaxae.models
    import jaxae.sweep
    from jaxae.config import SweepConfig, TrainConfig
    from jaxae.sweep import sweep_program

    def program(m: int, variant: str):
        if variant == "matmuls":
            return matmuls_only(images, m, steps=steps, chunk=min(50, steps))
        # largest latent first: every group runs at latent 64, even a 1-member one, so the
        # FLOPs counted below are the executed ones
        ms = latent_members(m, largest_first=True)
        tcfg = TrainConfig(binarize=variant != "grey")
        noise, adam = jaxae.models.latent_noise, jaxae.sweep.make_optimizer
        try:  # the variants swap one piece while the program is built and traced
            if variant == "no_noise":
                jaxae.models.latent_noise = lambda key, b, d: jnp.zeros((b, d))
            if variant == "sgd":
                jaxae.sweep.make_optimizer = lambda tcfg: optax.sgd(1.0)
            prog = sweep_program(SweepConfig(ms, tcfg))
            return _program_speed(prog, images, steps=steps, batch=128) * m
        finally:
            jaxae.models.latent_noise, jaxae.sweep.make_optimizer = noise, adam

    flops = train_flops(784, HIDDEN, max(LATENTS))  # the padded group's size
    variants = ("full", "sgd", "grey", "no_noise", "matmuls")
    best = {(m, v): 0.0 for m in members for v in variants}
    for _ in range(rounds):
        for m in members:
            for v in variants:
                best[m, v] = max(best[m, v], program(m, v))
    return {
        str(m): {
            v: {
                "member_examples_per_s": best[m, v],
                "pct_of_peak": 100 * best[m, v] * flops / 1e9 / peak,
            }
            for v in variants
        }
        for m in members
    }


def matmuls_only(images, m: int, *, steps: int = 60, chunk: int = 50, latent: int = 64) -> float:
    """Member-examples/s of the sweep step's matrix products alone: m stacked
    784-512-256-(2 x latent) encoders and latent-256-512-784 decoders, vmapped as in the
    sweep, each step the forward products, the products of the backward pass (input and
    weight gradients) and an SGD update, nothing else (no activations, loss, noise or
    Adam). The same FLOPs as ``train_flops``: the ceiling of the step at m members.
    """
    import jax
    import jax.numpy as jnp

    widths = (784, *HIDDEN)
    shapes = [*zip(widths[:-1], widths[1:], strict=True)]
    shapes += [(widths[-1], 2 * latent), (latent, widths[-1])]
    shapes += [(b, a) for a, b in reversed(list(zip(widths[:-1], widths[1:], strict=True)))]
    keys = jax.random.split(jax.random.key(0), len(shapes))
    ws = [0.01 * jax.random.normal(k, (m, *s)) for k, s in zip(keys, shapes, strict=True)]
    enc = len(widths) - 1

    def grads(ws, x):
        acts, h = [], x
        for i, w in enumerate(ws):
            acts.append(h)
            h = h @ w
            if i == enc:  # the decoder reads the first half (the mean) of the encoder's output
                h = h[:, :latent]
        g, out = 1e-3 * h, [None] * len(ws)
        for i in reversed(range(len(ws))):
            if i == enc:
                g = jnp.concatenate([g, g], 1)
            out[i] = acts[i].T @ g
            if i:
                g = g @ ws[i].T
        return out

    def body(ws, i):
        x = images[jax.lax.dynamic_slice_in_dim(jnp.arange(images.shape[0]), i * 128, 128)]
        x = x.reshape(128, -1).astype(jnp.float32) / 255.0
        g = jax.vmap(grads, in_axes=(0, None))(ws, x)
        return [w - 1e-6 * d for w, d in zip(ws, g, strict=True)], None

    f = jax.jit(lambda ws, s: jax.lax.scan(body, ws, s + jnp.arange(chunk))[0], donate_argnums=0)
    ws = f(ws, 0)
    jax.block_until_ready(ws)
    t = time.perf_counter()
    for i in range(steps // chunk):
        ws = f(ws, i * chunk)
    jax.block_until_ready(ws)
    return (steps // chunk) * chunk * 128 * m / (time.perf_counter() - t)


MAINJOB_SMALL = ("--train-size", "2560", "--epochs", "2")


def main_job(args=MAINJOB_SMALL) -> dict:
    """Wall time of ``python -m experiments.latent_sweep ARGS`` as a fresh process, and
    where it goes (the phases the sweep prints and saves in results.json). The digit
    classifier of the sample-quality scores is trained once, beforehand, in models/ (a
    first run's one-time cost: the sweep's "classifier" phase)."""
    from jaxae import quality

    clf = quality.fit_classifier(quality.default_path("models", "mnist"), "mnist")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "experiments.latent_sweep", "--models-dir", f"{tmp}/m"]
        cmd += ["--runs-dir", f"{tmp}/r", "--no-progress", "--classifier", clf.path, *args]
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        doc = json.loads(Path(f"{tmp}/m/latent_sweep/results.json").read_text())
    phases = doc["timing"]["phases"]
    return {
        "args": list(args),
        "wall_s": wall,
        "phases": phases,
        "outside_training_s": wall - phases["train"],
        "member_examples_per_s": doc["timing"]["member_examples_per_s"],
    }


def architectures(images, peak: float, *, steps: int = 200, rounds: int = 3) -> dict:
    """Steady-state examples/s and % of matmul peak of one VAE per architecture (latent
    20, one dense layer of 256 after the convolutions or the pixels), rounds interleaved,
    best of each."""
    from jaxae.config import ModelConfig, TrainConfig

    tcfg = TrainConfig()
    progs = {a: one_model(ModelConfig(arch=a, hidden=(256,)), tcfg) for a in ("mlp", "conv")}
    best = dict.fromkeys(progs, 0.0)
    for _ in range(rounds):
        for a, prog in progs.items():
            speed = _program_speed(prog, images, steps=steps, batch=128)
            best[a] = max(best[a], speed)
    flops = {
        "mlp": train_flops(784, (256,), 20),
        "conv": conv_train_flops((28, 28, 1), (256,), 20),
    }
    rows = {
        a: {
            "examples_per_s": v,
            "mflop_per_example": flops[a] / 1e6,
            "pct_of_peak": 100 * v * flops[a] / 1e9 / peak,
        }
        for a, v in best.items()
    }
    return rows | {"conv_over_mlp": best["conv"] / best["mlp"]}


def _platform() -> str:
    import jax

    return jax.devices()[0].platform


def iw_throughput(*, k: int = 1000, batch: int = 100) -> dict:
    """Decoder evaluations per second of the importance-weighted bound (VAE 784-512-256-20)."""
    import jax
    import jax.numpy as jnp

    from jaxae.config import ModelConfig
    from jaxae.metrics import model_iw_terms
    from jaxae.models import Model, init_params

    cfg = ModelConfig(hidden=HIDDEN, latent=20)
    params = init_params(cfg, jax.random.key(0))
    x = jax.random.bernoulli(jax.random.key(1), 0.2, (batch, 784)).astype(jnp.float32)
    f = jax.jit(
        lambda p, x, key: model_iw_terms(
            p, x, jnp.ones(20), key=key, k=k, chunk=250, model=Model(cfg)
        )["iw"]
    )
    f(params, x, jax.random.key(2)).block_until_ready()
    t = time.perf_counter()
    f(params, x, jax.random.key(3)).block_until_ready()
    return {"decoder_evals_per_s": k * batch / (time.perf_counter() - t), "k": k}


RSS_SCRIPT = """
import sys
from benchmarks.run import HIDDEN, LATENTS, own_peak_rss_mb
from jaxae.config import Member, ModelConfig, SweepConfig, TrainConfig
from jaxae.runner import run
from jaxae.sweep import sweep_program
tcfg = TrainConfig(epochs=1)
members = tuple(Member(ModelConfig(hidden=HIDDEN, latent=k), 0) for k in LATENTS)
run(sweep_program(SweepConfig(members, tcfg)), tcfg, "rss", models_dir=sys.argv[1] + "/m",
    runs_dir=sys.argv[1] + "/r", progress=False)
print(own_peak_rss_mb())
"""


def own_peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: Linux's VmHWM, else ``ru_maxrss``.

    ``ru_maxrss`` is not enough on Linux: a child started by fork/vfork + exec inherits its
    parent's peak there, so a child of a big process reports the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            hwm = next(ln for ln in f if ln.startswith("VmHWM:"))
        return int(hwm.split()[1]) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss() -> dict:
    """Peak resident memory of a fresh process training the 6-member sweep for one epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, tmp],
            capture_output=True,
            text=True,
            check=True,
        )
    return {"peak_rss_mb": float(out.stdout.strip().splitlines()[-1])}


# the main job's members at one epoch of 2,560 digits: 12 members (6 latents x 2 kinds)
# per seed, hidden widths --hidden (64 on a CPU as a proxy for 512-256)
MEMBERS_ARGS = ("--train-size", "2560", "--epochs", "1", "--quality-samples", "0")
MEMBERS_SCRIPT = """
import atexit, contextlib, json, runpy, sys
from benchmarks.run import own_peak_rss_mb
from jaxae import runner
out = sys.argv.pop(1)
grew = {}  # phase -> MiB its blocks raised the process's peak resident memory by
timed = runner.Stopwatch.__call__

@contextlib.contextmanager
def watched(self, phase):
    before = own_peak_rss_mb()
    with timed(self, phase):
        yield
    grew[phase] = grew.get(phase, 0.0) + own_peak_rss_mb() - before

runner.Stopwatch.__call__ = watched
atexit.register(lambda: open(out, "w").write(json.dumps({"peak": own_peak_rss_mb(), "grew": grew})))
sys.argv[0] = "experiments/latent_sweep.py"
runpy.run_module("experiments.latent_sweep", run_name="__main__")
"""


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def members_run(seeds: int, hidden: tuple[int, ...], extra=(), cache: str = "off") -> dict:
    """One fresh ``experiments.latent_sweep`` process with 12 x ``seeds`` members: its
    phases (results.json), wall time, peak RSS (and how much each phase raised it; the
    rest is start-up: imports, data) and the bytes of its checkpoints. ``cache``: its
    ``--compile-cache`` (off: every program compiled)."""
    with tempfile.TemporaryDirectory() as tmp:
        rss = Path(tmp) / "rss"
        cmd = [sys.executable, "-c", MEMBERS_SCRIPT, str(rss), "--models-dir", f"{tmp}/m"]
        cmd += ["--runs-dir", f"{tmp}/r", "--no-progress", "--compile-cache", cache]
        cmd += [*MEMBERS_ARGS, "--seeds", str(seeds), "--hidden", *map(str, hidden), *extra]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        run = Path(f"{tmp}/m/latent_sweep")
        doc = json.loads((run / "results.json").read_text())
        memory = json.loads(rss.read_text())
        return {
            "members": 12 * seeds,
            "wall_s": wall,
            "phases": doc["timing"]["phases"],
            "peak_rss_mb": memory["peak"],
            # which phases raised the peak, and by how much (MiB)
            "peak_growth_mb": memory["grew"],
            # the step folders: every checkpoint the run keeps
            "checkpoint_bytes": sum(
                dir_bytes(d) for d in run.iterdir() if d.is_dir() and d.name.isdigit()
            ),
            "member_examples_per_s": doc["timing"]["member_examples_per_s"],
        }


MEMBER_PHASES = ("init", "compile", "train", "epoch eval", "checkpoints", "final eval", "figures")


def members(seeds=(3, 12, 48), hidden=(64,), extra=()) -> dict:
    """``members_run`` at 36, 144 and 576 members."""
    return {str(12 * s): members_run(s, hidden, extra) for s in seeds}


# the bytes of the data a members run holds: its training digits and the test set, uint8
MEMBERS_DATA_BYTES = (2560 + 10000) * 784


def memory_target_mb(checkpoint_bytes: float) -> float:
    """The peak resident memory a members run should stay under, in MiB: 1 GB + 1.5 x
    (stacked state + data); the state is its one checkpoint's bytes (stored uncompressed)."""
    return (1e9 + 1.5 * (checkpoint_bytes + MEMBERS_DATA_BYTES)) / 2**20


def members_table(rows: dict) -> str:
    """The members section as a markdown table (seconds, MiB, MB)."""
    head = ["members", *MEMBER_PHASES, "wall", "peak RSS", "target", "checkpoint on disk"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in rows.items():
        cells = [m, *(f"{r['phases'].get(p, 0.0):.1f} s" for p in MEMBER_PHASES)]
        cells += [f"{r['wall_s']:.1f} s", f"{r['peak_rss_mb']:.0f} MiB"]
        cells.append(f"{memory_target_mb(r['checkpoint_bytes']):.0f} MiB")
        cells.append(f"{r['checkpoint_bytes'] / 1e6:.0f} MB")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--out", default="benchmarks/results.json")
    p.add_argument(
        "--member-seeds",
        nargs="+",
        type=int,
        default=[3, 12, 48],
        help="members section: seeds per run (12 members each; default 3 12 48)",
    )
    p.add_argument(
        "--member-hidden",
        nargs="+",
        type=int,
        default=None,
        help="members section: hidden widths (default 64 on a CPU, 512 256 elsewhere)",
    )
    p.add_argument(
        "--member-warm",
        action="store_true",
        help="members section: run each size twice with one fresh compilation cache, "
        "cold then warm (default: once, the cache off)",
    )
    args = p.parse_args(argv)

    import jax

    from jaxae.runner import load_images

    images = jax.numpy.asarray(load_images("mnist", "train"))
    res = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "device": str(jax.devices()[0]),
            "device_kind": jax.devices()[0].device_kind,
        }
    }
    cpu = _platform() == "cpu"
    n = 2048 if cpu else 8192
    peak = peak_gflops(n)
    res["peak"] = {"matmul_gflops": peak, "n": n}
    print(f"{res['machine']['device_kind']}, jax {jax.__version__}", flush=True)
    print(f"matmul peak ({n}^3 float32): {peak:.1f} GFLOP/s", flush=True)
    out = Path(args.out)

    def save():
        out.write_text(json.dumps(res, indent=1))

    save()
    if "single" in args.only:
        # an accelerator runs 400 steps in milliseconds: time more of them there
        res["single"] = r = single(images, peak, steps=400 if cpu else 4000)
        print(
            f"single VAE 784-512-256-20, batch 128: {r['examples_per_s']:.0f} examples/s, "
            f"{r['gflops']:.1f} GFLOP/s = {r['pct_of_peak']:.0f}% of peak (best of 3); "
            f"where the time goes: dynamic binarization {100 * r['binarize_share']:.0f}% "
            f"(grey pixels: {r['grey_examples_per_s']:.0f} examples/s), Adam's update "
            f"{100 * r['adam_share']:.0f}% (grey pixels and SGD: "
            f"{r['grey_sgd_examples_per_s']:.0f} examples/s, {r['rest_pct_of_peak']:.0f}% of peak)",
            flush=True,
        )
    save()
    if "archs" in args.only:
        res["archs"] = r = architectures(images, peak, steps=200 if cpu else 2000)
        for a in ("mlp", "conv"):
            print(
                f"{a} VAE (latent 20, dense 256), batch 128: {r[a]['examples_per_s']:.0f} "
                f"examples/s, {r[a]['mflop_per_example']:.1f} MFLOP/example = "
                f"{r[a]['pct_of_peak']:.0f}% of peak (best of 3, interleaved)",
                flush=True,
            )
    save()
    if "torch" in args.only:
        try:
            res["torch"] = r = versus_torch(images)
            print(
                f"vs PyTorch {r['torch']} on {r['torch_device']} ({r['torch_threads']} threads): "
                f"jaxae {r['jaxae_examples_per_s']:.0f} vs torch {r['torch_examples_per_s']:.0f} "
                f"examples/s, ratio {r['ratio']:.2f}x",
                flush=True,
            )
        except ImportError:
            print("PyTorch not installed (pip install -e '.[bench]'); skipping that row")
    save()
    if "sweep" in args.only:
        res["sweep"] = r = sweep_vs_separate()
        print(
            f"6-member latent sweep vs 6 separate runs, {r['steps']} steps each: "
            f"in one process {r['sweep_wall_s']:.1f} s vs {r['separate_wall_s']:.1f} s, "
            f"ratio {r['wall_ratio']:.2f}; as commands {r['cli_sweep_wall_s']:.1f} s vs "
            f"{r['cli_separate_wall_s']:.1f} s, ratio {r['cli_wall_ratio']:.2f}; "
            f"steady state {r['sweep_member_examples_per_s']:.0f} vs "
            f"{r['separate_member_examples_per_s']:.0f} member-examples/s, "
            f"time ratio {r['steady_ratio']:.2f}",
            flush=True,
        )
    save()
    if "scaling" in args.only:
        res["scaling"] = r = scaling(images, steps=100 if cpu else 2000)
        print(
            "sweep scaling, steady state: "
            + ", ".join(
                f"{m} members {v['member_examples_per_s']:.0f} member-examples/s"
                for m, v in r.items()
            ),
            flush=True,
        )
    save()
    if "ablation" in args.only:
        res["ablation"] = r = sweep_ablation(images, peak, steps=100 if cpu else 1000)
        for m, row in r.items():
            print(
                f"sweep of {m} members, steady state, member-examples/s (% of peak): "
                + ", ".join(
                    f"{v} {x['member_examples_per_s']:.0f} ({x['pct_of_peak']:.0f}%)"
                    for v, x in row.items()
                ),
                flush=True,
            )
    save()
    if "mainjob" in args.only:
        res["mainjob"] = r = main_job()
        print(
            f"main job ({' '.join(r['args'])}): wall {r['wall_s']:.1f} s, outside training "
            f"{r['outside_training_s']:.1f} s; "
            + ", ".join(f"{k} {v:.1f} s" for k, v in r["phases"].items()),
            flush=True,
        )
    save()
    if "iw" in args.only:
        res["iw"] = r = iw_throughput()
        print(
            f"IW bound: {r['decoder_evals_per_s']:.0f} decoder evaluations/s (k={r['k']})",
            flush=True,
        )
    save()
    if "rss" in args.only:
        res["rss"] = r = peak_rss()
        print(f"peak RSS, 6-member sweep on full MNIST: {r['peak_rss_mb']:.0f} MiB", flush=True)
    save()
    if "members" in args.only:
        hidden = args.member_hidden or ([64] if cpu else list(HIDDEN))
        rows = {}
        runs = [(s, None) for s in args.member_seeds]
        if args.member_warm:
            runs = [(s, w) for s in args.member_seeds for w in ("cold", "warm")]
        caches = {s: tempfile.mkdtemp(prefix="jaxae-cache-") for s in args.member_seeds}
        for seeds, warmth in runs:
            label = f"{12 * seeds}" + (f" ({warmth})" if warmth else "")
            cache = caches[seeds] if warmth else "off"
            rows[label] = r = members_run(seeds, tuple(hidden), cache=cache)
            print(
                f"{label} members (hidden {'-'.join(map(str, hidden))}): wall "
                f"{r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MiB, checkpoints "
                f"{r['checkpoint_bytes'] / 1e6:.0f} MB; "
                + ", ".join(f"{k} {v:.1f} s" for k, v in r["phases"].items()),
                flush=True,
            )
            grew = ", ".join(f"{k} +{v:.0f}" for k, v in r["peak_growth_mb"].items() if v >= 1)
            print(f"  peak RSS raised by (MiB): {grew}", flush=True)
            res["members"] = {"hidden": hidden, "runs": rows}
            save()
        for d in caches.values():
            shutil.rmtree(d, ignore_errors=True)
        print(members_table(rows), flush=True)
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
