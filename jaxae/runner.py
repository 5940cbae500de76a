"""The training loop: ``train``, one function that reads top to bottom.

Set-up (data, run folder, checkpoint manager, state, compiled functions), then one ``for``
over chunks of steps: train, check, log, and at each epoch's end the periodic work —
evaluation, summaries, checkpoint — done by small objects the loop calls; after every
chunk a signal stops all processes with a checkpoint. What is trained is a
``sweep.Program`` (one model is a sweep of one); ``fit`` and ``fit_sweep`` build it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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
from jaxae.config import Member, ModelConfig, SweepConfig, TrainConfig, changes, describe_change
from jaxae.keys import data_keys
from jaxae.step import check_finite, chunk_size, jit_epoch_batches, make_chunk
from jaxae.summary import Summaries
from jaxae.sweep import Program, restore_state, sweep_dict, sweep_program

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


def refuse_changes(saved: dict, new: dict) -> None:
    """Raise RunError naming the first field (and its flags) that a resumed run would
    silently change: the saved config compared field by field (``config.changes``; the
    fields that may change are ``config.RESUMABLE``)."""
    saved = {**saved, "type": "sweep", "sweep": sweep_dict(saved)}  # any saved layout
    found = changes(saved, {k: new[k] for k in new if k in saved or k == "type"})
    if found:
        raise RunError(
            describe_change(*found[0]) + "; start a new run or resume with the run's own settings"
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


@functools.cache
def _git_commit() -> str | None:
    """The commit of the jaxae checkout this code runs from, or None (installed wheel).

    Read once per process: a checkout that moves on while a long process (a report, a
    notebook) runs does not change the code that process loaded."""
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


def command_line(record: Path, resuming: bool) -> list[str]:
    """The command line a run records in its config.json: this process's ``sys.argv``; a
    resumed run's is the recorded one followed by this one's arguments (parsed again,
    the later flags win), so a second resume still knows the first start's flags."""
    if resuming:
        try:
            before = json.loads(record.read_text())["argv"]
        except (OSError, ValueError, KeyError, TypeError):
            before = None
        if before and Path(before[0]).name == Path(sys.argv[0]).name:
            return [*before, *sys.argv[1:]]
    return list(sys.argv)


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

    def __init__(self):
        self.signum = None  # the last signal received
        self._old = {}  # the handlers to put back

    def __enter__(self):
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
    checkpoints; ``pipeline.run_sweep`` adds start-up, final evaluation and figures.
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


@dataclasses.dataclass(frozen=True)
class Steps:
    """A run's steps: ``per_epoch`` (the last partial batch is dropped), ``total`` and
    the steps of one compiled call (``chunk``, a divisor of ``per_epoch``)."""

    per_epoch: int
    total: int
    chunk: int

    @classmethod
    def of(cls, examples: int, tcfg: TrainConfig) -> Steps:
        per_epoch = examples // tcfg.batch_size
        return cls(per_epoch, per_epoch * tcfg.epochs, chunk_size(per_epoch, tcfg.chunk))

    def chunks(self, s: int):
        """(first step, steps) of each chunk from global step s to the end; a chunk never
        crosses an epoch's end (a run resumed mid-epoch finishes it with a shorter one)."""
        while s < self.total:
            n = min(self.chunk, self.per_epoch - s % self.per_epoch)
            yield s, n
            s += n

    def epoch(self, s: int) -> int:
        """The epoch (1-based) that step s ends or lies in."""
        return -(-s // self.per_epoch)


class Compiled:
    """The Program's functions compiled once for a run's shapes: chunks of steps, the
    evaluation (the whole test set and, for the epochs before the last, its first
    ``eval_examples``) and the image grids. Their outputs come back gathered on the host.
    """

    def __init__(self, prog: Program, tcfg: TrainConfig, steps: Steps, state, train_x, test_x):
        self.prog, self.batch, self.train_x = prog, tcfg.batch_size, train_x
        keys = data_keys(tcfg.data_seed)
        self.perm_key = keys["perm"]
        self.batches = jit_epoch_batches(train_x.shape[0], tcfg.batch_size)
        scanned = make_chunk(
            prog.step, binarize_key=keys["binarize"], schedule=tcfg.schedule, total=steps.total
        )

        def chunk(state, h, images, idx, s0):
            # the parameters after the chunk's last update are checked too: a loss is
            # computed before its update, so a finite last loss can hide NaN parameters
            state, metrics = scanned(state, h, images, idx, s0)
            return state, metrics, prog.finite(state)

        self.jit_chunk = jax.jit(chunk, donate_argnums=0)
        self.chunks: dict[int, object] = {}  # compiled per length
        self.epoch, self.epoch_idx = None, None  # the permutation of the current epoch
        self.chunk(steps.chunk, state)
        evaluate, h = jax.jit(prog.evaluate), prog.hyper
        n = tcfg.eval_examples
        self.tests = {None: hosts.replicate(test_x)}
        if 0 < n < test_x.shape[0]:
            self.tests[n] = hosts.replicate(test_x[:n])
        self.evaluations = {k: evaluate.lower(state, h, x).compile() for k, x in self.tests.items()}
        self.image_digits = hosts.replicate(test_x[:32])
        self.image_grids = jax.jit(prog.images).lower(state, h, self.image_digits).compile()

    def chunk(self, n: int, state):
        """The chunk of n steps, compiled on first use."""
        if n not in self.chunks:
            idx = hosts.replicate(np.zeros((n, self.batch), np.int32))
            args = (state, self.prog.hyper, self.train_x, idx, hosts.replicate(np.int32(0)))
            self.chunks[n] = self.jit_chunk.lower(*args).compile()
        return self.chunks[n]

    def train(self, state, s: int, n: int):
        """Steps s .. s + n - 1: (state, metrics {name: (n, M)}, finite (M,) bools)."""
        epoch, j = divmod(s, self.batches_per_epoch)
        if epoch != self.epoch:
            self.epoch, self.epoch_idx = epoch, np.asarray(self.batches(self.perm_key, epoch))
        idx = hosts.replicate(self.epoch_idx[j : j + n])
        out = self.chunk(n, state)(
            state, self.prog.hyper, self.train_x, idx, hosts.replicate(np.int32(s))
        )
        state, (metrics, finite) = out[0], hosts.to_host(out[1:])
        metrics = {k: v.reshape(n, -1) for k, v in self.prog.gather(metrics, 1).items()}
        return state, metrics, self.prog.gather(finite)

    @property
    def batches_per_epoch(self) -> int:
        return self.train_x.shape[0] // self.batch

    def evaluate(self, state, n: int | None = None) -> dict:
        """Test metrics {name: (M,)} on the whole test set, or on its first n examples."""
        out = self.evaluations[n](state, self.prog.hyper, self.tests[n])
        out = self.prog.gather(hosts.to_host(out))
        return {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in out.items()}

    def images(self, state) -> dict:
        """Prior samples and test reconstructions {name: (M, n, H, W, C)}."""
        out = self.image_grids(state, self.prog.hyper, self.image_digits)
        return self.prog.gather(hosts.to_host(out))


class EpochMeans:
    """Running sums of the current epoch's train metrics, and the last finished epoch's
    means. ``partial`` is what a checkpoint taken mid-epoch records."""

    def __init__(self, last: dict, partial: dict):
        self.last = {k: np.asarray(v) for k, v in last.items()}
        self.n = int(partial.get("steps", 0))
        self.sums = {k: np.asarray(v, np.float32) for k, v in partial.get("sums", {}).items()}

    def add(self, metrics: dict) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.sum(0)
        self.n += next(iter(metrics.values())).shape[0]

    def close(self) -> dict:
        """The epoch's means; the sums start again."""
        self.last = {k: v / self.n for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return self.last

    def partial(self) -> dict:
        return {"steps": self.n, "sums": {k: np.asarray(v).tolist() for k, v in self.sums.items()}}


class Saver:
    """Saves a checkpoint with the bookkeeping a resumed run needs in its config: the last
    finished epoch's train means, the dropped members and the unfinished epoch's sums.

    With ``keep="params"`` a save before step ``last`` holds the parameters only (its
    config says ``"holds": "params"``); ``everything=True`` (a save on a signal) and the
    last step's hold the whole state."""

    def __init__(
        self,
        ckpts: Checkpointer,
        prog: Program,
        record: dict,
        sw: Stopwatch,
        *,
        keep: str = "all",
        last: int = 0,
    ):
        self.ckpts, self.prog, self.record, self.sw = ckpts, prog, record, sw
        self.keep, self.last = keep, last
        self.step = None  # the last step saved

    def __call__(
        self, state, s: int, means: EpochMeans, dropped: dict | None, everything: bool = False
    ) -> None:
        params_only = self.keep == "params" and s < self.last and not everything
        config = {
            **self.record,
            "last_epoch": {k: v.tolist() for k, v in means.last.items()},
            "dropped": dict(dropped or {}),
            "epoch_partial": means.partial(),
            "holds": "params" if params_only else "all",
        }
        with self.sw("checkpoints"):
            saved = self.prog.to_saved(state)
            if params_only:
                saved = tuple({k: v for k, v in g.items() if k != "opt_state"} for g in saved)
            self.ckpts.save(s, saved, config, borrow=True)  # see ``ready``
        self.step = s

    def ready(self) -> None:
        """Blocks until the last save no longer reads the state: the next step may donate
        it (``Checkpointer.save(borrow=True)``)."""
        if self.step is not None:
            with self.sw("checkpoints"):
                self.ckpts.released()


class EpochEnd:
    """The work at an epoch's end: a checkpoint (written in the background meanwhile), the
    test metrics (of the first ``eval_examples`` test digits before the last epoch),
    TensorBoard's test scalars and image grids and the progress line. Returns the metrics
    when they cover the whole test set, else None."""

    def __init__(self, compiled, summaries, save, runlog, sw, tcfg, steps, kinds, start):
        self.compiled, self.summaries, self.save, self.runlog = compiled, summaries, save, runlog
        self.sw, self.tcfg, self.steps, self.kinds = sw, tcfg, steps, kinds
        self.start, self.started = start, time.perf_counter()

    def __call__(self, state, step: int, means: EpochMeans, dropped, stopping=False):
        train = means.close()
        # the checkpoint first: it is written in the background while the test set runs
        self.save(state, step, means, dropped, everything=stopping)
        subset = self.tcfg.eval_examples if step < self.steps.total else None
        subset = subset if subset in self.compiled.tests else None
        with self.sw("epoch eval"):
            test = self.compiled.evaluate(state, subset)
        with self.sw("summaries"):
            self.summaries.scalars(step, {f"test/{k}": v for k, v in test.items()})
            self.summaries.images(step, self.compiled.images(state))
        done, elapsed = step - self.start, time.perf_counter() - self.started
        members = len(self.kinds)
        speed = done * self.tcfg.batch_size / self.sw.seconds["train"] * members
        line = epoch_line(step, self.steps, self.tcfg.epochs, train, test, self.kinds)
        eta = elapsed / max(done, 1) * (self.steps.total - step)
        subset_note = "" if subset is None else f" (test: first {subset} examples)"
        self.runlog(
            f"{line}{subset_note}  {speed:,.0f} member-examples/s  "
            f"elapsed {format_seconds(elapsed)}  ETA {format_seconds(eta)}"
        )
        return test if subset is None else None


def epoch_line(step: int, steps: Steps, epochs: int, train: dict, test: dict, kinds) -> str:
    """Epoch, step, and the train and test loss per model kind (a VAE's -ELBO in nats and
    an AE's squared error are different quantities: one mean each)."""
    losses = kind_means(train["loss"], kinds, "train") | kind_means(test["loss"], kinds, "test")
    return f"epoch {steps.epoch(step)}/{epochs}  step {step}/{steps.total}  " + "  ".join(
        f"{k} {v}" for k, v in losses.items()
    )


def run(prog: Program, tcfg: TrainConfig, run: str, **kwargs) -> dict:
    """Train ``prog``; returns the result dict of ``train`` (see there)."""
    return train(prog, tcfg, run, **kwargs)[0]


def train(
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
) -> tuple[dict, tuple]:
    """Train ``prog`` for ``tcfg.epochs`` epochs.

    Args:
        prog: the members to train (``sweep.sweep_program``; one model is a sweep of one).
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
        (result, state): the result dict (``members``, ``steps``, ``test`` and ``train``
        metrics as lists over members, ``timing``, ``dropped``, ``checkpoint`` and
        ``logs`` paths, ``env``) and the trained state (``prog``'s layout). ``prog``
        itself is left as it was.
    """
    # --- set-up: data first, so bad input fails before anything is written ---------------
    check_run_name(run)
    sw = stopwatch or Stopwatch()
    with sw("data"):
        train_x, test_x = _data(tcfg, data)
    ckpt_dir, log_dir, lock = _claim_run_dir(models_dir, runs_dir, run, resume, overwrite)
    try:
        with sw("init"):
            ckpts = Checkpointer(ckpt_dir, max_to_keep=tcfg.max_to_keep)
            resuming = resume and ckpts.latest_step() is not None
            saved = ckpts.read_config() if resuming else {}
            if resuming:
                refuse_changes(saved, prog.config)
                if saved.get("holds") == "params":
                    raise RunError(
                        f"run {run!r} cannot resume: its newest checkpoint (step "
                        f"{ckpts.latest_step()}) holds the parameters only (--keep params); "
                        "start it again with --overwrite"
                    )
            if saved.get("dropped") and not drop_nonfinite:
                raise RunError(
                    f"run {run!r} dropped diverged members ({', '.join(saved['dropped'])}); "
                    "resume it with --drop-nonfinite"
                )
            env = environment()
            record = {**prog.config, "run": run, "members": prog.names}
            if hosts.is_primary():  # the run records itself before it trains
                argv = command_line(ckpt_dir / "config.json", resuming)
                write_json(ckpt_dir / "config.json", {**record, "argv": argv, "env": env})
            # a state of its own, which the loop donates: ``prog.state`` is never touched
            if resuming:
                state = prog.from_saved(restore_state(ckpts, saved))
            else:
                state = prog.init()
            summaries = Summaries(log_dir, prog.names, prog.hparams, enabled=hosts.is_primary())
        steps = Steps.of(train_x.shape[0], tcfg)
        start = global_step(state)
        last = saved.get("last_epoch", {})
        if resuming and not last and start:  # checkpoints of older runs: read the logs
            last = summaries.epoch_means(start - min(steps.per_epoch, start), start)
        means = EpochMeans(last, saved.get("epoch_partial", {}))
        dropped = dict(saved.get("dropped", {})) if drop_nonfinite else None
        with sw("compile"):
            compiled = Compiled(prog, tcfg, steps, state, train_x, test_x)
        save = Saver(ckpts, prog, record, sw, keep=tcfg.keep, last=steps.total)
        runlog = RunLog(ckpt_dir / "train.log")
        kinds = [h["kind"] for h in prog.hparams]

        # --- the loop: train a chunk, check, log; at an epoch's end evaluate, summarise
        # and save; after every chunk, stop on a signal ----------------------------------
        end_epoch = EpochEnd(compiled, summaries, save, runlog, sw, tcfg, steps, kinds, start)
        test = None  # metrics of the whole test set at the last evaluation
        step = start
        bar = tqdm(total=steps.total, initial=step, disable=bar_disabled(progress), unit="step")
        if step < steps.total:
            runlog(
                f"training {len(prog.names)} member(s): step {step}/{steps.total}, "
                f"{steps.per_epoch} steps per epoch"
            )
        # pending saves always finish: a crash or a signal keeps the last good checkpoint
        with ckpts, summaries, bar, _above(bar), _Signals() as signals:
            for first, count in steps.chunks(start):
                save.ready()
                with sw("train"):
                    state, metrics, finite = compiled.train(state, first, count)
                for msg in check_finite(metrics, first, prog.names, dropped, finite):
                    runlog(msg, logging.WARNING)
                means.add(metrics)
                step = first + count
                with sw("summaries"):
                    summaries.scalars(step, {f"train/{k}": v.mean(0) for k, v in metrics.items()})
                bar.update(count)
                bar.set_postfix(epoch=steps.epoch(step), **kind_means(metrics["loss"], kinds))
                # a signal that reached one process stops them all at the same step (the
                # save is collective: one process saving alone would wait forever)
                signum = hosts.agree_max(signals.signum or 0)
                if step % steps.per_epoch == 0:
                    test = end_epoch(state, step, means, dropped, bool(signum)) or test
                if signum:
                    if save.step != step:
                        save(state, step, means, dropped, everything=True)
                    runlog(f"stopped by signal {signum} at step {step}; checkpoint saved")
                    raise Interrupted(signum, step)
            with sw("checkpoints"):  # the last save's writes finish here
                ckpts.wait()
        if test is None:  # nothing ran: the run was already trained
            with sw("epoch eval"):
                test = compiled.evaluate(state)

        # --- the result ----------------------------------------------------------------------
        train_s = sw.seconds.get("train", 0.0)
        speed = (step - start) * tcfg.batch_size / train_s if train_s else np.nan
        result = {
            "run": run,
            "members": prog.names,
            "steps": step,
            "test": {k: v.tolist() for k, v in test.items()},
            "train": {k: np.asarray(v).tolist() for k, v in means.last.items()},
            "timing": {
                "compile_s": sw.seconds["compile"],
                "train_s": train_s,
                "steps": step - start,
                "examples_per_s": speed,
                "member_examples_per_s": speed * len(prog.names),
                "phases": dict(sw.seconds),
            },
            "dropped": dropped or {},
            "checkpoint": str(ckpt_dir),
            "logs": str(log_dir),
            "env": env,
        }
        if hosts.is_primary():
            write_json(ckpt_dir / "results.json", result)
        hosts.barrier("jaxae-run-saved")  # every process sees the finished checkpoint
        return result, state
    finally:
        lock.close()


def _claim_run_dir(models_dir, runs_dir, run: str, resume: bool, overwrite: bool):
    """(checkpoint dir, log dir, lock) of the run, checked and locked by process 0; every
    process learns its answer, and all raise when it refused."""
    models_dir, runs_dir = Path(models_dir).resolve(), Path(runs_dir).resolve()
    refused = None
    try:
        out = prepare_run_dir(models_dir, runs_dir, run, resume=resume, overwrite=overwrite)
    except Exception as e:  # noqa: BLE001 - re-raised below, after telling the others
        refused = e
    if hosts.agree_max(refused is not None):
        raise refused or RunError(f"process 0 refused to start run {run!r} (its output says why)")
    hosts.barrier("jaxae-run-dir")
    return out


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
    """The step counter of a state: the one all stacked members share."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if getattr(path[-1], "key", None) == "step":
            return int(hosts.to_host(leaf).reshape(-1)[0])
    raise ValueError("state has no step counter")


# --- entry points of the library ----------------------------------------------------------


def fit(cfg: ModelConfig, tcfg: TrainConfig, name: str, **kwargs) -> dict:
    """Train one model (a sweep of one, seed ``tcfg.seed``); checkpoints in
    ``models/<run>``, summaries in ``runs/<run>``.

    Keyword arguments go to ``train`` (``data=``, ``models_dir=``, ``resume=``, ...).
    Returns:
        the result dict (test metrics, timings, paths).
    """
    return fit_sweep(SweepConfig((Member(cfg, tcfg.seed),), tcfg), name, **kwargs)[0]


def fit_sweep(sweep: SweepConfig, name: str, **kwargs) -> tuple[dict, Program]:
    """Train every member of ``sweep`` as one compiled program.

    Returns:
        (result, program): the result dict and the Program holding the trained state.
    """
    sw = kwargs.setdefault("stopwatch", Stopwatch())
    with sw("init"):
        prog = sweep_program(sweep)
    result, state = train(prog, sweep.train, name, **kwargs)
    return result, prog.with_state(state)
