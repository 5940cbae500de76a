"""The training loop shared by single runs and sweeps.

A ``Program`` (``jaxae.step``) is whatever is trained — one model, or a sweep's groups of
stacked members — seen through a few pure functions. ``run`` owns the orchestration:
epochs and chunks, compile timing, progress bar, summaries, evaluation, checkpoints,
resume, signals and the non-finite guard. ``fit`` and ``fit_sweep`` build the Program.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from jaxae import data as jdata
from jaxae import hosts
from jaxae.checkpoint import Checkpointer
from jaxae.config import ModelConfig, SweepConfig, TrainConfig
from jaxae.step import (
    Program,
    all_finite_members,
    check_finite,
    chunk_size,
    data_keys,
    jit_epoch_batches,
    make_chunk,
    single_program,
)
from jaxae.summary import Summaries
from jaxae.sweep import replicated, sweep_program

log = logging.getLogger("jaxae")


class RunError(RuntimeError):
    """A run that cannot start as asked (existing run, locked folder, ...)."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved")
        self.signum, self.step = signum, step


def load_images(dataset: str, split: str) -> np.ndarray:
    """uint8 images (N, F) of a dataset split, flattened."""
    x, _ = jdata.load(dataset, split)
    return x.reshape(x.shape[0], -1)


# Fields of a run's config that may change when it is resumed: the length (to extend it),
# the chunking of steps into compiled calls, and evaluation/checkpoint housekeeping.
RESUMABLE = {"epochs", "chunk", "eval_batch", "eval_examples", "max_to_keep"}


def _field_defaults(path: str) -> dict:
    """Default value of every field of the config at ``path`` (``model``,
    ``sweep.members.3.model``: a ModelConfig; ``train``, ``sweep.train``: a TrainConfig),
    as ``to_dict`` writes it (JSON); {} elsewhere."""
    import dataclasses

    cls = {"model": ModelConfig, "train": TrainConfig}.get(path.rsplit(".", 1)[-1])
    if cls is None:
        return {}
    out = {}
    for f in dataclasses.fields(cls):
        v = getattr(cls(), f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_changes(saved, new, path: str = "") -> list[tuple[str, object, object]]:
    """(field path, new value, saved value) for every field that differs, except
    ``RESUMABLE`` ones; ``new`` is a Program's config (type, model/sweep, train).

    A field missing from the saved config (a run written before the field existed) had
    the field's default: a new value other than the default is a change.
    """
    if isinstance(new, dict) and isinstance(saved, dict):
        out = []
        defaults = _field_defaults(path)
        for k, v in new.items():
            if k in RESUMABLE:
                continue
            if k not in saved:
                if k in defaults and v != defaults[k]:
                    out.append((f"{path}.{k}" if path else k, v, defaults[k]))
                continue
            out += config_changes(saved.get(k), v, f"{path}.{k}" if path else k)
        return out
    if isinstance(new, list) and isinstance(saved, list) and len(new) == len(saved):
        return [
            c
            for i, (a, b) in enumerate(zip(saved, new, strict=True))
            for c in config_changes(a, b, f"{path}.{i}")
        ]
    return [] if new == saved else [(path, new, saved)]


def refuse_changes(saved: dict, new: dict) -> None:
    """Raise RunError naming the first field a resumed run would silently change."""
    changes = config_changes(saved, {k: new[k] for k in new if k in saved or k == "type"})
    if changes:
        field, here, there = changes[0]
        raise RunError(
            f"{field} {here} differs from the run's {there}; start a new run or resume "
            "with the run's own settings"
        )
    # a decaying schedule spans the run's steps: more epochs would change the rates of
    # the steps already taken, so the resumed run could not match any uninterrupted one
    train_new, train_saved = _train_dict(new), _train_dict(saved)
    schedule = train_saved.get("schedule", "constant")
    if schedule != "constant" and train_new.get("epochs") != train_saved.get("epochs"):
        raise RunError(
            f"epochs {train_new.get('epochs')} differs from the run's {train_saved.get('epochs')}: "
            f"the {schedule} learning-rate schedule spans the run's length, so it cannot "
            "be extended; start a new run"
        )


def _train_dict(config: dict) -> dict:
    """The TrainConfig dict of a Program's or a saved run's config."""
    if "train" in config:
        return config["train"]
    return config.get("sweep", {}).get("train", {})


def check_run_name(run: str) -> None:
    """A run name is one plain folder name: it cannot climb out of --models-dir."""
    p = Path(run)
    if not run or p.is_absolute() or len(p.parts) != 1 or run in (".", "..") or "\\" in run:
        raise RunError(f"run name {run!r} must be a plain folder name (no '/', '..' or root)")


def environment() -> dict:
    """Versions, devices and the git commit: what a run's numbers depend on besides config."""
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    pkgs = ("jaxae", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
    return {
        "versions": {p: version(p) for p in pkgs},
        "python": sys.version.split()[0],
        "platform": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """The commit of the jaxae checkout this code runs from, or None (installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def write_json(path: Path, doc: dict) -> None:
    """Write ``doc`` as JSON atomically: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def prepare_run_dir(models_dir: Path, runs_dir: Path, run: str, *, resume: bool, overwrite: bool):
    """Lock the run folder and check it against --resume/--overwrite.

    Returns:
        (checkpoint dir, log dir, lock file). The lock (``.lock``, an flock) is held until
        the file is closed or the process dies, so two processes never train one run.
    """
    ckpt, logs = models_dir / run, runs_dir / run
    if not hosts.is_primary():  # process 0 checks, locks and cleans for every process
        return ckpt, logs, open(os.devnull, "w")  # noqa: SIM115
    ckpt.mkdir(parents=True, exist_ok=True)
    lock = open(ckpt / ".lock", "w")  # noqa: SIM115 - held for the whole run
    if not lock_file(lock):
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


def lock_file(f) -> bool:
    """Take an exclusive lock on open file f without waiting; False if another process
    holds it. The operating system drops the lock when the file is closed or the process
    dies (``flock`` on POSIX, ``msvcrt.locking`` on Windows)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class RunLog:
    """A run's progress lines: to ``logging.getLogger("jaxae")`` and, on process 0,
    appended with a time stamp to ``<run folder>/train.log`` (readable after the fact,
    whatever the console showed)."""

    def __init__(self, path: Path | None):
        self.path = path if hosts.is_primary() else None

    def __call__(self, msg: str, level: int = logging.INFO) -> None:
        log.log(level, msg)
        if self.path is not None and self.path.parent.is_dir():
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            try:  # a log line is never worth a run (or, with several processes, a hang)
                with open(self.path, "a") as f:
                    f.write(f"{stamp} {msg}\n")
            except OSError as e:
                log.warning(f"could not append to {self.path}: {e}")
                self.path = None


def format_seconds(s: float) -> str:
    """h:mm:ss or m:ss."""
    s = int(round(s))
    h, m = divmod(s, 3600)
    return f"{h}:{m // 60:02d}:{m % 60:02d}" if h else f"{m // 60}:{m % 60:02d}"


class _Signals:
    """Turn SIGINT/SIGTERM into a flag checked between chunks.

    Python lets only the main thread install handlers: called from another thread (a
    notebook worker, a web service, a tuning tool), training runs without them and a
    signal acts as it would without jaxae.
    """

    def __enter__(self):
        self.signum, self._old = None, {}
        if threading.current_thread() is threading.main_thread():
            sigs = (signal.SIGINT, signal.SIGTERM)
            self._old = {s: signal.signal(s, self._handle) for s in sigs}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


# --- the loop ---------------------------------------------------------------------------


class Stopwatch:
    """Wall seconds per phase of a run (``with sw("compile"): ...``), in order of first use.

    The runner times data, init, compile, train, per-epoch evaluation, summaries and
    checkpoints; ``experiment.run_sweep`` adds start-up, final evaluation and figures.
    JAX dispatches asynchronously, so each timed block ends on a host copy of its result.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t


def format_phases(seconds: dict[str, float], wall: float | None = None) -> str:
    """One line: each phase's seconds, then the wall time and what lies outside training."""
    parts = [f"{k} {v:.1f} s" for k, v in seconds.items()]
    if wall is not None:
        rest = wall - sum(seconds.values())
        outside = wall - seconds.get("train", 0.0)
        parts += [f"other {rest:.1f} s", f"wall {wall:.1f} s (outside training {outside:.1f} s)"]
    return "time: " + " · ".join(parts)


def run(
    prog: Program,
    tcfg: TrainConfig,
    run: str,
    *,
    data: tuple | None = None,
    models_dir="models",
    runs_dir="runs",
    resume=False,
    overwrite=False,
    progress: bool | None = None,
    drop_nonfinite=False,
    stopwatch: Stopwatch | None = None,
) -> dict:
    """Train ``prog`` for ``tcfg.epochs`` epochs; returns final metrics and timings.

    Args:
        prog: one model (``step.single_program``) or a sweep (``sweep.sweep_program``).
        tcfg: the training config (its ``dataset`` is ignored when ``data`` is given).
        run: run name: checkpoints in ``models_dir/run``, summaries in ``runs_dir/run``.
        data: ``(train_x, test_x)`` uint8 arrays (N, F) to train on instead of loading
            ``tcfg.dataset`` (tests and benchmarks drive the real loop on small data).
        resume: continue from the run's latest checkpoint; overwrite: start it again.
        progress: show a progress bar on stderr; ``None``: only when stderr is a terminal
            (logs of CI jobs and batch systems stay free of ``\r`` lines).
        drop_nonfinite: a member whose loss turns NaN/Inf is dropped, the others go on.
        stopwatch: where the phases' seconds add up (a new one when None); they are
            returned in ``timing["phases"]``.
    Returns:
        dict with ``members``, ``steps``, ``test`` and ``train`` metrics (lists over
        members), ``timing``, ``dropped``, ``checkpoint`` and ``logs`` paths.
    """
    # --- data first: bad input fails before anything is written ---
    check_run_name(run)
    sw = stopwatch or Stopwatch()
    with sw("data"):
        train_x, test_x = _data(tcfg, data)
    models_dir, runs_dir = Path(models_dir).resolve(), Path(runs_dir).resolve()
    refused = None
    try:  # only process 0 checks the folder; every process learns its answer
        ckpt_dir, log_dir, lock = prepare_run_dir(
            models_dir, runs_dir, run, resume=resume, overwrite=overwrite
        )
    except Exception as e:  # noqa: BLE001 - re-raised below, after telling the others
        refused = e
    if hosts.agree_max(refused is not None):
        raise refused or RunError(f"process 0 refused to start run {run!r} (its output says why)")
    hosts.barrier("jaxae-run-dir")
    try:
        with sw("init"):
            mgr = Checkpointer(ckpt_dir, max_to_keep=tcfg.max_to_keep)
            if resume and mgr.latest_step() is not None:
                refuse_changes(mgr.read_config(), prog.config)
            env = environment()
            if hosts.is_primary():  # the run records itself before it trains
                record = {**prog.config, "run": run, "members": prog.names}
                write_json(ckpt_dir / "config.json", {**record, "argv": sys.argv, "env": env})
            # the caller's state stays valid whatever happens: the loop donates a copy
            state, saved = _start(prog, mgr, resume)
            last_epoch = saved.get("last_epoch", {})
            config = {**prog.config, "run": run, "members": prog.names}
            summaries = Summaries(log_dir, prog.names, prog.hparams, enabled=hosts.is_primary())
            s = global_step(state)
            spe = train_x.shape[0] // tcfg.batch_size
            if resume and not last_epoch and s:  # checkpoints of older runs: read the logs
                last_epoch = summaries.epoch_means(s - min(spe, s), s)
        runlog = RunLog(ckpt_dir / "train.log")
        loop = _Loop(prog, tcfg, train_x, test_x, mgr, summaries, config, sw, runlog)
        loop.last_epoch = last_epoch
        loop.dropped = dict(saved.get("dropped", {})) if drop_nonfinite else None
        if saved.get("dropped") and not drop_nonfinite:
            raise RunError(
                f"run {run!r} dropped diverged members ({', '.join(saved['dropped'])}); "
                "resume it with --drop-nonfinite"
            )
        partial = saved.get("epoch_partial", {})
        if partial.get("steps"):  # stopped in the middle of an epoch: its sums so far
            loop.n = int(partial["steps"])
            loop.sums = {k: np.asarray(v, np.float32) for k, v in partial["sums"].items()}
        with sw("compile"):
            compile_s = loop.compile(state)
        state = loop.train(state, progress)
        prog.state = state
        result = {**loop.result(run, ckpt_dir, log_dir, compile_s), "env": env}
        result["timing"]["phases"] = dict(sw.seconds)
        if hosts.is_primary():
            write_json(ckpt_dir / "results.json", result)
        hosts.barrier("jaxae-run-saved")  # every process sees the finished checkpoint
        return result
    finally:
        lock.close()


def _data(tcfg: TrainConfig, data) -> tuple:
    """(train_x on the device, test_x on the host), uint8 (N, F); checks the batch size."""
    if data is None:
        data = load_images(tcfg.dataset, "train"), load_images(tcfg.dataset, "test")
    train_x, test_x = (np.asarray(a).reshape(a.shape[0], -1) for a in data)
    train_x = train_x[: tcfg.train_size]
    n = train_x.shape[0]
    if tcfg.batch_size > n:
        raise RunError(f"batch size {tcfg.batch_size} is larger than the dataset ({n} examples)")
    return hosts.replicate(train_x), test_x


def _start(prog: Program, mgr: Checkpointer, resume: bool) -> tuple:
    """(state, bookkeeping): a copy of the fresh state (the loop donates its buffers), or
    the state restored from the latest checkpoint with the bookkeeping its config holds:
    ``last_epoch`` (the last finished epoch's train means), ``dropped`` members and
    ``epoch_partial`` (the unfinished epoch's sums so far)."""
    if not (resume and mgr.latest_step() is not None):
        return jax.tree.map(lambda a: a.copy(), prog.state), {}
    state = prog.from_saved(mgr.restore(replicated(jax.eval_shape(prog.to_saved, prog.state))))
    saved = mgr.read_config()
    out = {k: saved[k] for k in ("dropped", "epoch_partial") if k in saved}
    out["last_epoch"] = {k: np.asarray(v) for k, v in saved.get("last_epoch", {}).items()}
    return state, out


class _Loop:
    """One run's epoch loop: compiled functions, running means and the save policy."""

    def __init__(self, prog, tcfg, train_x, test_x, mgr, summaries, config, sw, runlog):
        self.prog, self.tcfg, self.mgr, self.summaries = prog, tcfg, mgr, summaries
        self.sw, self.runlog = sw, runlog
        self.kinds = [h.get("kind", "") for h in prog.hparams] or [""] * len(prog.names)
        self.started, self.first_step = time.perf_counter(), 0  # set when training starts
        self.train_x, self.test_x, self.config = train_x, test_x, config
        self.spe = train_x.shape[0] // tcfg.batch_size
        self.total = self.spe * tcfg.epochs
        self.c = chunk_size(self.spe, tcfg.chunk)
        self.dk = data_keys(tcfg.data_seed)
        self.batches = jit_epoch_batches(train_x.shape[0], tcfg.batch_size)
        self.train_s, self.steps_run, self.evals = 0.0, 0, None
        self.sums, self.n, self.epoch_idx = {}, 0, None

    def compile(self, state) -> float:
        """Compile the chunk, evaluation and image functions once; returns seconds."""
        t0 = time.perf_counter()
        steps = make_chunk(
            self.prog.step,
            binarize_key=self.dk["binarize"],
            schedule=self.tcfg.schedule,
            total=self.total,
        )
        finite = all_finite_members(self.prog)

        def chunk(state, h, images, idx, s0):
            # the parameters after the chunk's last update are checked too: a loss is
            # computed before its update, so a finite last loss can hide NaN parameters
            state, m = steps(state, h, images, idx, s0)
            return state, m, finite(state)

        self.chunk = jax.jit(chunk, donate_argnums=0)
        self.compiled = {}
        self.chunk_fn(self.c, state)
        h, n = self.prog.hyper, self.tcfg.eval_examples
        evaluate = jax.jit(self.prog.evaluate)
        self.evaluate = {None: evaluate.lower(state, h, hosts.replicate(self.test_x)).compile()}
        if 0 < n < self.test_x.shape[0]:  # the epochs before the last: the first n examples
            self.evaluate[n] = evaluate.lower(state, h, hosts.replicate(self.test_x[:n])).compile()
        x = hosts.replicate(self.test_x[:32])
        self.images = jax.jit(self.prog.images).lower(state, h, x).compile()
        return time.perf_counter() - t0

    def chunk_fn(self, n: int, state):
        """The chunk of n steps, compiled on first use: a run resumed in the middle of an
        epoch with another ``--chunk`` ends that epoch with a shorter chunk."""
        if n not in self.compiled:
            idx0 = hosts.replicate(np.zeros((n, self.tcfg.batch_size), np.int32))
            args = (state, self.prog.hyper, self.train_x, idx0, hosts.replicate(np.int32(0)))
            self.compiled[n] = self.chunk.lower(*args).compile()
        return self.compiled[n]

    def train(self, state, progress: bool | None):
        """Run chunks until the last step; save each epoch and on a signal."""
        s = saved = self.first_step = global_step(state)
        self.started = time.perf_counter()
        bar = tqdm(total=self.total, initial=s, disable=bar_disabled(progress), unit="step")
        if s < self.total:
            self.runlog(
                f"training {len(self.prog.names)} member(s): step {s}/{self.total}, "
                f"{self.spe} steps per epoch"
            )
        # Pending saves always finish: a crash or a signal keeps the last good checkpoint.
        with self.mgr, self.summaries, bar, _above(bar), _Signals() as sig:
            while s < self.total:
                state, m, n = self.run_chunk(state, s)
                s += n
                bar.update(n)
                bar.set_postfix(epoch=-(-s // self.spe), **kind_means(m["loss"], self.kinds))
                if s % self.spe == 0 or s == self.total:
                    self.end_epoch(state, s, last=s == self.total)
                    saved = s
                # a signal that reached one process stops them all at the same step (the
                # save is collective: one process saving alone would wait forever)
                signum = hosts.agree_max(sig.signum or 0)
                if signum:
                    if saved != s:
                        self.save(state, s)
                    self.runlog(f"stopped by signal {signum} at step {s}; checkpoint saved")
                    raise Interrupted(signum, s)
            if saved != s:
                self.save(state, s)
            with self.sw("checkpoints"):  # the last save's writes finish here
                self.mgr.wait()
        if self.evals is None:
            with self.sw("epoch eval"):
                self.evals = self.run_evaluate(state)
        self.steps = s
        return state

    def run_chunk(self, state, s: int):
        """Up to ``self.c`` steps from global step s, never past the epoch's end: train,
        check, log; returns (state, metrics, steps run)."""
        e, j = divmod(s, self.spe)
        if j == 0 or self.epoch_idx is None:
            self.epoch_idx = self.batches(self.dk["perm"], e)
        n = min(self.c, self.spe - j)
        chunk = self.chunk_fn(n, state)
        t = time.perf_counter()
        idx = hosts.replicate(np.asarray(self.epoch_idx[j : j + n]))
        state, m, finite = chunk(
            state, self.prog.hyper, self.train_x, idx, hosts.replicate(np.int32(s))
        )
        m, finite = hosts.to_host((m, finite))
        m, finite = self.prog.gather(m, 1), self.prog.gather(finite)
        m = {k: v.reshape(n, -1) for k, v in m.items()}
        dt = time.perf_counter() - t
        self.train_s += dt
        self.sw.seconds["train"] = self.sw.seconds.get("train", 0.0) + dt
        for msg in check_finite(m, s, self.prog.names, self.dropped, params_finite=finite):
            self.runlog(msg, logging.WARNING)
        self.steps_run += n
        for k, v in m.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.sum(0)
        self.n += n
        with self.sw("summaries"):
            self.summaries.scalars(s + n, {f"train/{k}": v.mean(0) for k, v in m.items()})
        return state, m, n

    def end_epoch(self, state, s: int, last: bool) -> None:
        """Train means, test metrics, image grids and a checkpoint at the epoch's end.

        Before the last epoch the test metrics may come from the first ``eval_examples``
        test examples (``self.evals`` is then left as it was: results use all of them).
        """
        self.last_epoch = {k: v / self.n for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        n = self.tcfg.eval_examples
        n = None if last or n not in self.evaluate else n
        with self.sw("epoch eval"):
            evals = self.run_evaluate(state, n)
        if n is None:
            self.evals = evals
        with self.sw("summaries"):
            self.summaries.scalars(s, {f"test/{k}": v for k, v in evals.items()})
            x = hosts.replicate(self.test_x[:32])
            images = hosts.to_host(self.images(state, self.prog.hyper, x))
            self.prog.last_images = self.prog.gather(images)
            self.summaries.images(s, self.prog.last_images)
        self.config["last_epoch"] = {k: v.tolist() for k, v in self.last_epoch.items()}
        self.runlog(self.epoch_line(s, evals, n))
        self.save(state, s)

    def epoch_line(self, s: int, evals: dict, n: int | None) -> str:
        """One progress line: epoch, step, train and test loss per model kind, speed,
        elapsed time and the estimated time to the end of training."""
        train = kind_means(self.last_epoch["loss"], self.kinds, "train")
        test = kind_means(evals["loss"], self.kinds, "test")
        losses = "  ".join(f"{k} {v}" for k, v in {**train, **test}.items())
        done = s - self.first_step
        elapsed = time.perf_counter() - self.started
        speed = self.examples_per_s() * len(self.prog.names)
        eta = elapsed / max(done, 1) * (self.total - s)
        subset = "" if n is None else f" (test: first {n} examples)"
        return (
            f"epoch {-(-s // self.spe)}/{self.tcfg.epochs}  step {s}/{self.total}  {losses}"
            f"{subset}  {speed:,.0f} member-examples/s  elapsed {format_seconds(elapsed)}"
            f"  ETA {format_seconds(eta)}"
        )

    def save(self, state, s: int) -> None:
        # the bookkeeping a resumed run needs travels in the checkpoint's config
        self.config["dropped"] = dict(self.dropped or {})
        self.config["epoch_partial"] = {
            "steps": self.n,
            "sums": {k: np.asarray(v).tolist() for k, v in self.sums.items()},
        }
        with self.sw("checkpoints"):
            self.mgr.save(s, self.prog.to_saved(state), self.config)

    def run_evaluate(self, state, n: int | None = None) -> dict:
        """Test metrics of every member on the whole test set, or on its first n examples."""
        out = self.evaluate[n](state, self.prog.hyper, hosts.replicate(self.test_x[:n]))
        out = self.prog.gather(hosts.to_host(out))
        return {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in out.items()}

    def examples_per_s(self) -> float:
        """Training examples per second so far (each seen by every member)."""
        return self.steps_run * self.tcfg.batch_size / self.train_s if self.train_s else np.nan

    def result(self, run: str, ckpt_dir, log_dir, compile_s: float) -> dict:
        speed = self.examples_per_s()
        timing = {
            "compile_s": compile_s,
            "train_s": self.train_s,
            "steps": self.steps_run,
            "examples_per_s": speed,
            "member_examples_per_s": speed * len(self.prog.names),
        }
        return {
            "run": run,
            "members": self.prog.names,
            "steps": self.steps,
            "test": {k: v.tolist() for k, v in self.evals.items()},
            "train": {k: v.tolist() for k, v in self.last_epoch.items()},
            "timing": timing,
            "dropped": self.dropped or {},
            "checkpoint": str(ckpt_dir),
            "logs": str(log_dir),
        }


def _above(bar):
    """While the bar shows, log lines to the console handlers of the "jaxae" logger (the
    command line's) print above it instead of breaking it."""
    if bar.disable or not log.handlers:
        return contextlib.nullcontext()
    return logging_redirect_tqdm([log])


def bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: ``None`` hides the bar when stderr is not a terminal."""
    return None if progress is None else not progress


def kind_means(loss, kinds: list[str], label: str = "loss") -> dict:
    """Losses per model kind, for the progress bar and log: one mean each (a VAE's -ELBO
    in nats and an AE's squared error are different quantities; their average means
    nothing). ``loss``: (..., M); the last row is used. Diverged members are left out."""
    loss = np.asarray(loss, np.float64).reshape(-1, len(kinds))[-1]
    out = {}
    for k in dict.fromkeys(kinds):
        sel = loss[[i for i, kk in enumerate(kinds) if kk == k]]
        sel = sel[np.isfinite(sel)]
        out[f"{k} {label}".strip()] = f"{float(sel.mean()):.4g}" if sel.size else "nan"
    return out


def global_step(state) -> int:
    """The step counter of a state: a model's ``step`` or the shared one of stacked members."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if getattr(path[-1], "key", None) == "step":
            return int(hosts.to_host(leaf).reshape(-1)[0])
    raise ValueError("state has no step counter")


# --- entry points of the library ----------------------------------------------------------


def fit(cfg: ModelConfig, tcfg: TrainConfig, name: str, **kwargs) -> dict:
    """Train one model; checkpoints in ``models/<run>``, summaries in ``runs/<run>``.

    Keyword arguments go to ``run`` (``data=``, ``models_dir=``, ``resume=``, ...).
    Returns:
        the runner's result dict (test metrics, timings, paths).
    """
    sw = kwargs.setdefault("stopwatch", Stopwatch())
    with sw("init"):
        prog = single_program(cfg, tcfg)
    return run(prog, tcfg, name, **kwargs)


def fit_sweep(sweep: SweepConfig, name: str, **kwargs) -> tuple[dict, Program]:
    """Train every member of ``sweep`` as one compiled program; returns (result, program)."""
    sw = kwargs.setdefault("stopwatch", Stopwatch())
    with sw("init"):
        prog = sweep_program(sweep)
    return run(prog, sweep.train, name, **kwargs), prog
