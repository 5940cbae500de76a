"""The training loop shared by single runs and sweeps.

A ``Program`` is whatever is trained — one model, or a sweep's groups of stacked
members — seen through a few pure functions. ``run`` owns the orchestration: epochs
and chunks, compile timing, progress bar, summaries, evaluation, checkpoints, resume,
signals and the non-finite guard.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxae import data as jdata
from jaxae.checkpoint import Checkpointer
from jaxae.config import TrainConfig
from jaxae.summary import Summaries
from jaxae.train import (
    _jit_epoch_batches,
    check_finite,
    chunk_size,
    data_keys,
    make_chunk,
)


class RunError(RuntimeError):
    """A run that cannot start as asked (existing run, locked folder, ...)."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved")
        self.signum, self.step = signum, step


@dataclasses.dataclass
class Program:
    """What ``run`` trains. Metrics and evaluations carry a trailing member axis (M,)."""

    names: list[str]
    state: object
    hyper: object
    step: Callable  # step(state, h, x, s, bkey) -> (state, metrics)
    evaluate: Callable  # evaluate(state, h, test) -> {name: (M,)}
    images: Callable  # images(state, h, x_test) -> {name: (M, n, H, W, C)}
    config: dict


def load_images(dataset: str, split: str) -> np.ndarray:
    """uint8 images (N, F) of a dataset split, flattened."""
    x, _ = jdata.load(dataset, split)
    return x.reshape(x.shape[0], -1)


def prepare_run_dir(models_dir: Path, runs_dir: Path, run: str, *, resume: bool, overwrite: bool):
    """Lock the run folder and check it against --resume/--overwrite.

    Returns:
        (checkpoint dir, log dir, lock file). The lock (``.lock``, an flock) is held until
        the file is closed or the process dies, so two processes never train one run.
    """
    ckpt, logs = models_dir / run, runs_dir / run
    ckpt.mkdir(parents=True, exist_ok=True)
    lock = open(ckpt / ".lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RunError(
            f"run {run!r} is being trained by another process ({ckpt} is locked)"
        ) from None
    exists = any(p.name != ".lock" for p in ckpt.iterdir())
    if exists and not (resume or overwrite):
        lock.close()
        raise RunError(
            f"run {run!r} already exists in {ckpt}: pass --resume to continue it "
            "or --overwrite to start again"
        )
    if overwrite and not resume:
        for p in ckpt.iterdir():
            if p.name != ".lock":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        shutil.rmtree(logs, ignore_errors=True)
    return ckpt, logs, lock


class _Signals:
    """Turn SIGINT/SIGTERM into a flag checked between chunks."""

    def __enter__(self):
        self.signum = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def run(
    prog: Program,
    tcfg: TrainConfig,
    run: str,
    *,
    models_dir="models",
    runs_dir="runs",
    resume=False,
    overwrite=False,
    progress=True,
    drop_nonfinite=False,
) -> dict:
    """Train ``prog`` for ``tcfg.epochs`` epochs; returns final metrics and timings."""
    # --- data first: bad input fails before anything is written ---
    train_x = load_images(tcfg.dataset, "train")[: tcfg.train_size]
    test_x = load_images(tcfg.dataset, "test")
    n = train_x.shape[0]
    if tcfg.batch_size > n:
        raise RunError(f"batch size {tcfg.batch_size} is larger than the dataset ({n} examples)")
    train_x = jnp.asarray(train_x)
    models_dir, runs_dir = Path(models_dir).resolve(), Path(runs_dir).resolve()
    ckpt_dir, log_dir, lock = prepare_run_dir(
        models_dir, runs_dir, run, resume=resume, overwrite=overwrite
    )
    try:
        dropped = {} if drop_nonfinite else None
        return _train(
            prog, tcfg, run, ckpt_dir, log_dir, train_x, test_x, resume, progress, dropped
        )
    finally:
        lock.close()


def _train(prog, tcfg, run, ckpt_dir, log_dir, train_x, test_x, resume, progress, dropped):
    n = train_x.shape[0]
    spe = n // tcfg.batch_size
    total = spe * tcfg.epochs
    c = chunk_size(spe, tcfg.chunk)
    dk = data_keys(tcfg.data_seed)
    batches = _jit_epoch_batches(n, tcfg.batch_size)

    # --- checkpoint: fresh or resumed ---
    mgr = Checkpointer(ckpt_dir, max_to_keep=tcfg.max_to_keep)
    state, last_epoch = prog.state, {}
    if resume and mgr.latest_step() is not None:
        state = mgr.restore(jax.eval_shape(lambda: state))
        # the last finished epoch's train means travel in the checkpoint's config
        saved_means = mgr.read_config().get("last_epoch", {})
        last_epoch = {k: np.asarray(v) for k, v in saved_means.items()}
    s = global_step(state)
    config = {**prog.config, "run": run, "members": prog.names}
    summaries = Summaries(log_dir, prog.names, hparams=config)
    if resume and not last_epoch and s:  # checkpoints of older runs: read the logs instead
        last_epoch = summaries.epoch_means(s - min(spe, s), s)

    # --- compile once, timed apart from training ---
    chunk = make_chunk(prog.step, binarize_key=dk["binarize"])
    t0 = time.perf_counter()
    idx0 = jnp.zeros((c, tcfg.batch_size), jnp.int32)
    compiled = (
        jax.jit(chunk, donate_argnums=0)
        .lower(state, prog.hyper, train_x, idx0, jnp.int32(0))
        .compile()
    )
    evaluate = jax.jit(prog.evaluate)
    images = jax.jit(prog.images)
    compile_s = time.perf_counter() - t0

    # --- train ---
    train_s, steps_run, epoch_idx, evals = 0.0, 0, None, None
    epoch_sums, epoch_n, saved = {}, 0, s
    bar = tqdm(total=total, initial=s, disable=not progress, unit="step", dynamic_ncols=True)
    # Pending saves always finish: a crash or a signal keeps the last good checkpoint.
    with mgr, summaries, bar, _Signals() as sig:
        while s < total:
            e, j = divmod(s, spe)
            if epoch_idx is None or j == 0:
                epoch_idx = batches(dk["perm"], e)
            t = time.perf_counter()
            state, m = compiled(state, prog.hyper, train_x, epoch_idx[j : j + c], jnp.int32(s))
            m = {k: np.asarray(v).reshape(c, -1) for k, v in m.items()}
            train_s += time.perf_counter() - t
            check_finite(m, s, prog.names, dropped)
            s, steps_run = s + c, steps_run + c
            for k, v in m.items():
                epoch_sums[k] = epoch_sums.get(k, 0.0) + v.sum(0)
            epoch_n += c
            summaries.scalars(s, {f"train/{k}": v.mean(0) for k, v in m.items()})
            bar.update(c)
            bar.set_postfix(epoch=e + 1, loss=f"{float(m['loss'].mean()):.2f}")
            if s % spe == 0 or s == total:
                last_epoch = {k: v / epoch_n for k, v in epoch_sums.items()}
                epoch_sums, epoch_n = {}, 0
                evals = _evaluate(evaluate, state, prog, test_x)
                summaries.scalars(s, {f"test/{k}": v for k, v in evals.items()})
                summaries.images(
                    s, jax.device_get(images(state, prog.hyper, jnp.asarray(test_x[:32])))
                )
                config["last_epoch"] = {k: v.tolist() for k, v in last_epoch.items()}
                mgr.save(s, state, config)
                saved = s
            if sig.signum is not None:
                if saved != s:
                    mgr.save(s, state, config)
                raise Interrupted(sig.signum, s)
        if saved != s:
            mgr.save(s, state, config)
    if evals is None:
        evals = _evaluate(evaluate, state, prog, test_x)
    speed = steps_run * tcfg.batch_size / train_s if train_s else float("nan")
    timing = {
        "compile_s": compile_s,
        "train_s": train_s,
        "steps": steps_run,
        "examples_per_s": speed,
        "member_examples_per_s": speed * len(prog.names),
    }
    result = {
        "run": run,
        "members": prog.names,
        "steps": s,
        "test": {k: v.tolist() for k, v in evals.items()},
        "train": {k: v.tolist() for k, v in last_epoch.items()},
        "timing": timing,
        "dropped": dropped or {},
        "checkpoint": str(ckpt_dir),
        "logs": str(log_dir),
    }
    (ckpt_dir / "results.json").write_text(json.dumps(result, indent=1))
    prog.state = state
    return result


def global_step(state) -> int:
    """The step counter of a state: a model's ``step`` or the shared one of stacked members."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if getattr(path[-1], "key", None) == "step":
            return int(np.asarray(leaf).reshape(-1)[0])
    raise ValueError("state has no step counter")


def _evaluate(evaluate, state, prog: Program, test_x) -> dict:
    out = evaluate(state, prog.hyper, jnp.asarray(test_x))
    return {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in out.items()}
