"""Defects found off the happy path, each pinned by a test that failed before its fix:
non-finite parameters, resume bookkeeping, several processes, sample noise, likelihood
bounds on grey targets, progress lines, analysis failures, a portable lock."""

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, run_py, tiny_model, tiny_train

from jaxae import runner
from jaxae import sweep as jsweep
from jaxae.checkpoint import Checkpointer
from jaxae.config import Member, SweepConfig
from jaxae.restore import load
from jaxae.runner import RunError, fit, load_images, run
from jaxae.step import NonFiniteError
from jaxae.sweep import single_program


@pytest.fixture(scope="module")
def data():
    return load_images("mnist", "train")[:1280], load_images("mnist", "test")[:300]


def _kw(tmp_path, data):
    return {
        "data": data,
        "models_dir": tmp_path / "m",
        "runs_dir": tmp_path / "r",
        "progress": False,
    }


def _finite(tree) -> bool:
    return all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(tree))


def test_non_finite_parameters_are_never_saved(tmp_path, data):
    # an infinite rate: step 1's loss (computed before the update) is finite, the
    # parameters after it are not, and step 1 ends the epoch, where the loop saves
    tcfg = tiny_train(epochs=2, train_size=128)
    prog = single_program(tiny_model(), tcfg)
    hyper = tuple({**h, "lr": jnp.full_like(h["lr"], np.inf)} for h in prog.hyper)
    prog = dataclasses.replace(prog, hyper=hyper)
    with pytest.raises(NonFiniteError, match="non-finite parameters at step 1"):
        run(prog, tcfg, "nan", **_kw(tmp_path, data))
    with Checkpointer(tmp_path / "m" / "nan", create=False) as ck:
        assert ck.latest_step() is None  # the last good checkpoint: none was good


def _sweep(epochs, **kw):
    members = (Member(tiny_model(latent=2), 0), Member(tiny_model(latent=4), 0))
    tcfg = tiny_train(epochs=epochs, train_size=256, chunk=1, **kw)
    prog = jsweep.sweep_program(SweepConfig(members, tcfg))
    (group,) = prog.hyper
    lr = jnp.asarray(group["lr"]).at[1].set(np.inf)  # member 1 diverges at its first step
    return dataclasses.replace(prog, hyper=({**group, "lr": lr},)), tcfg


def test_dropped_members_stay_dropped_on_resume(tmp_path, data):
    kw = {**_kw(tmp_path, data), "drop_nonfinite": True}
    whole = run(*_sweep(2), "whole", **kw)
    run(*_sweep(1), "part", **kw)
    resumed = run(*_sweep(2), "part", resume=True, **kw)
    name = "vae,latent=4,beta=1,seed=0"
    assert whole["dropped"] == resumed["dropped"] == {name: 1}
    # without --drop-nonfinite the run says why it cannot go on, in one line
    with pytest.raises(RunError, match="resume it with --drop-nonfinite"):
        run(*_sweep(3), "part", resume=True, **_kw(tmp_path, data))


class _StopAfterFirstChunk:
    """Stands in for the signal handlers: a SIGTERM seen after the first chunk."""

    def __enter__(self):
        self.checks = 0
        return self

    def __exit__(self, *exc):
        return False

    @property
    def signum(self):
        self.checks += 1
        return signal.SIGTERM if self.checks == 1 else None


def test_a_resume_in_the_middle_of_an_epoch_keeps_its_train_means(tmp_path, data, monkeypatch):
    cfg, tcfg = tiny_model(), tiny_train(epochs=1)  # 10 steps, chunks of 5
    whole = fit(cfg, tcfg, "whole", **_kw(tmp_path, data))
    with monkeypatch.context() as m:
        m.setattr(runner, "_Signals", _StopAfterFirstChunk)
        with pytest.raises(runner.Interrupted, match="at step 5"):
            fit(cfg, tcfg, "part", **_kw(tmp_path, data))
    resumed = fit(cfg, tcfg, "part", resume=True, **_kw(tmp_path, data))
    for k in ("loss", "recon", "kl"):
        np.testing.assert_allclose(resumed["train"][k], whole["train"][k], rtol=1e-6)


def test_more_epochs_under_a_decaying_schedule_are_refused(tmp_path, data):
    cfg = tiny_model()
    fit(cfg, tiny_train(epochs=1, schedule="cosine"), "c", **_kw(tmp_path, data))
    with pytest.raises(RunError, match="cosine learning-rate schedule"):
        fit(cfg, tiny_train(epochs=2, schedule="cosine"), "c", resume=True, **_kw(tmp_path, data))


def test_prior_samples_do_not_depend_on_the_sweep():
    # a latent-2 member's sample grid is the standalone model's, whatever else is stacked
    # with it (the noise of column j depends on the key and j only)
    from jaxae import metrics
    from jaxae.models import Model

    tcfg = tiny_train()
    members = (Member(tiny_model(latent=2), 0), Member(tiny_model(latent=16), 0))
    prog = jsweep.sweep_program(SweepConfig(members, tcfg))
    alone = single_program(tiny_model(latent=2), tcfg)
    x = jnp.asarray(load_images("mnist", "test")[:4])
    in_sweep = prog.gather(prog.images(prog.state, prog.hyper, x))["samples"][0]
    standalone = alone.gather(alone.images(alone.state, alone.hyper, x))["samples"][0]
    np.testing.assert_allclose(in_sweep, standalone, atol=1e-6)
    # the blur score too
    (group,) = prog.state
    padded = Model(jsweep.group_members(members)[0].cfg)
    masks = prog.hyper[0]["mask"]
    a = metrics._sample_entropy(padded, group["params"], masks, 0)[0]
    one = alone.state[0]["params"]  # a sweep of one: one group of one member
    b = metrics._sample_entropy(Model(tiny_model(latent=2)), one, jnp.ones((1, 2)), 0)[0]
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_no_likelihood_bounds_for_grey_targets_of_a_bernoulli_model(tmp_path, data):
    from jaxae.likelihoods import bounds_log_likelihood
    from jaxae.metrics import evaluate_run

    assert bounds_log_likelihood("bernoulli", True)
    assert not bounds_log_likelihood("bernoulli", False)
    assert not bounds_log_likelihood("gaussian", True)
    fit(tiny_model(), tiny_train(epochs=1, binarize=False), "grey", **_kw(tmp_path, data))
    (row,) = evaluate_run(load(tmp_path / "m" / "grey"), k=4, chunk=4)
    assert "nll_iw" not in row and "neg_elbo_k" not in row
    assert np.isfinite(row["mse"])


def test_progress_lines_per_epoch_in_the_log_and_the_run_folder(tmp_path, data, caplog):
    with caplog.at_level(logging.INFO, logger="jaxae"):
        fit(tiny_model(), tiny_train(epochs=2), "p", **_kw(tmp_path, data))
    lines = [r.getMessage() for r in caplog.records if r.name == "jaxae"]
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epochs] == ["1/2", "2/2"], lines
    assert all("vae train" in ln and "vae test" in ln and "ETA" in ln for ln in epochs)
    logged = (tmp_path / "m" / "p" / "train.log").read_text()
    assert all(ln in logged for ln in epochs)


def test_a_failed_score_loses_nothing_else(tmp_path, data, monkeypatch):
    # the AE's mixture fit fails: its FD GMM cell is '-', the reason is recorded, the
    # table, figures and every other score are written, and the command exits 3
    from jaxae import generate
    from jaxae.cli.sweep import sweep_main, sweep_parser

    def broken(*a, **k):
        raise np.linalg.LinAlgError("Matrix is not positive definite")

    monkeypatch.setattr(generate, "code_density", broken)
    out = ["--models-dir", str(tmp_path / "m"), "--runs-dir", str(tmp_path / "r")]
    argv = ["--kinds", "vae", "ae", "--latents", "2", "--seeds", "1", "--hidden", "16"]
    argv += ["--epochs", "1", "--train-size", "256", "--batch-size", "64", "--no-progress"]
    argv += ["--quality-samples", "100", "--compile-cache", "off", *out]
    code = sweep_main(sweep_parser("p", "d"), "s", ("latent",), argv)
    assert code == 3
    folder = tmp_path / "m" / "s"
    doc = json.loads((folder / "results.json").read_text())
    ae = next(r for r in doc["members"] if r["kind"] == "ae")
    vae = next(r for r in doc["members"] if r["kind"] == "vae")
    assert "LinAlgError" in ae["failed"]["sample quality (mixture)"]
    assert "frechet_gmm" not in ae and np.isfinite(ae["frechet"])
    assert np.isfinite(vae["frechet"]) and "failed" not in vae
    assert doc["failures"] == [
        {"member": ae["member"], "phase": "sample quality (mixture)", "reason": ANY_REASON}
    ]
    for f in ("results.csv", "latent_sweep.png", "samples.png"):
        assert (folder / f).is_file(), f


class _Any:
    def __eq__(self, other):
        return isinstance(other, str) and "LinAlgError" in other


ANY_REASON = _Any()


def test_the_library_imports_and_locks_without_fcntl(tmp_path):
    # Windows has no fcntl: the lock falls back to msvcrt (faked here)
    script = f"""
import sys, types
sys.modules["fcntl"] = None
import jaxae
from jaxae import runner
assert callable(jaxae.fit) and callable(jaxae.load)
calls = []
fake = types.SimpleNamespace(LK_NBLCK=2, locking=lambda fd, mode, n: calls.append(mode))
sys.modules["msvcrt"] = fake  # after the imports: the standard library reads it too
with open(r"{tmp_path / "lock"}", "w") as f:
    assert runner.lock_file(f) and calls == [2]
print("ok")
"""
    p = run_py("-c", script)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-2000:]


# --- several processes -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, n=2, devices=2):
    """n local processes of ``python -m ARGS`` joined by jax.distributed."""
    hosts = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", str(n)]
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    return [
        subprocess.Popen(
            [sys.executable, "-m", *args, *hosts, "--process-id", str(i)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


def test_a_signal_to_one_process_stops_all_at_one_step(tmp_path):
    args = ["experiments.latent_sweep", "--kinds", "vae", "--latents", "2", "--seeds", "2"]
    args += ["--hidden", "8", "--epochs", "400", "--train-size", "256", "--batch-size", "64"]
    args += ["--chunk", "1", "--no-progress", "--compile-cache", "off"]
    args += ["--models-dir", str(tmp_path / "m"), "--runs-dir", str(tmp_path / "r")]
    procs = _start(args)
    err0 = []
    threading.Thread(target=lambda: err0.extend(procs[0].stderr), daemon=True).start()
    run_dir, t = tmp_path / "m" / "latent_sweep", time.time()
    while not (run_dir.is_dir() and any(p.name.isdigit() for p in run_dir.iterdir())):
        assert time.time() - t < 180 and procs[0].poll() is None, "".join(err0)
        time.sleep(0.2)  # until the first epoch's checkpoint: training is under way
    procs[1].send_signal(signal.SIGTERM)  # pre-emption of one host
    t = time.time()
    try:
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [143, 143], (codes, "".join(err0), procs[1].stderr.read()[-3000:])
    assert time.time() - t < 120
    err1 = procs[1].stderr.read()
    steps = {
        int(line.rsplit("at step ", 1)[1].split(";")[0])
        for line in [*err0, *err1.splitlines()]
        if line.startswith("interrupted:")
    }
    assert len(steps) == 1, (err0, err1)
    (step,) = steps
    assert load(tmp_path / "m" / "latent_sweep").step == step
