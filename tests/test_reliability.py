"""Resume, interruption, lock and non-finite guard (issue: reliability)."""

import dataclasses
import fcntl
import json
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, run_cli, tiny_model, tiny_train, trained

from jaxae import sweep as jsweep
from jaxae.checkpoint import Checkpointer
from jaxae.config import Member, SweepConfig
from jaxae.restore import load
from jaxae.runner import RunError, fit, run
from jaxae.step import NonFiniteError
from jaxae.sweep import single_program

TRAIN = ["jaxae.train", "--hidden", "16", "--train-size", "640", "--no-progress", "--chunk", "1"]


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def test_sweep_resume_is_bitwise_exact(tmp_path, monkeypatch):
    # a slow host copy: the next train step must wait for it before donating the state
    from jaxae import checkpoint

    copy = checkpoint._host_arrays
    monkeypatch.setattr(checkpoint, "_host_arrays", lambda t: (time.sleep(0.3), copy(t))[1])
    members = tuple(Member(tiny_model(latent=k), 0) for k in (2, 4))
    kw = {"models_dir": tmp_path / "m", "runs_dir": tmp_path / "r", "progress": False}
    whole = jsweep.sweep_program(SweepConfig(members, tiny_train(epochs=2)))
    _, whole = trained(whole, tiny_train(epochs=2), "a", **kw)
    part = jsweep.sweep_program(SweepConfig(members, tiny_train(epochs=1)))
    run(part, tiny_train(epochs=1), "b", **kw)
    resumed = jsweep.sweep_program(SweepConfig(members, tiny_train(epochs=2)))
    _, resumed = trained(resumed, tiny_train(epochs=2), "b", resume=True, **kw)
    for a, b in zip(_leaves(whole.state), _leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_keep_params_saves_the_optimizer_state_only_at_the_last_epoch(tmp_path):
    members = tuple(Member(tiny_model(latent=k), 0) for k in (2, 4))
    tcfg = tiny_train(epochs=3, keep="params")  # 10 steps per epoch
    kw = {"models_dir": tmp_path / "m", "runs_dir": tmp_path / "r", "progress": False}
    prog = jsweep.sweep_program(SweepConfig(members, tcfg))
    _, done = trained(prog, tcfg, "a", **kw)
    ckpt = tmp_path / "m" / "a"
    with Checkpointer(ckpt, create=False) as ck:
        holds = {s: ck.read_config(s)["holds"] for s in ck.all_steps()}
    assert holds == {10: "params", 20: "params", 30: "all"}
    early, last = load(ckpt, step=20), load(ckpt)
    assert all("opt_state" not in g for g in early.state)
    assert all("opt_state" in g for g in last.state)
    slim = load(ckpt, params_only=True)  # what evaluation and sampling hold
    assert all(set(g) == {"params"} for g in slim.state)
    for a, b in zip(_leaves(slim.state), _leaves([g["params"] for g in last.state]), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(last.state), _leaves(prog.to_saved(done.state)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert early.params(1)["params"]["decoder"]["Dense_0"]["kernel"].shape == (4, 16)
    # a run killed after a params-only save cannot resume exactly: it is refused
    import shutil

    shutil.rmtree(ckpt / "30")
    with pytest.raises(RunError, match="holds the parameters only"):
        run(prog, tcfg, "a", resume=True, **kw)


# SIGTERM (exit 143) stops the funnel cell of tests/test_smoke.py in the middle of an epoch
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130)])
def test_signal_saves_and_resume_continues_exactly(tmp_path, sig, code):
    base = [
        *TRAIN,
        "--epochs",
        "20",
        "--models-dir",
        str(tmp_path / "m"),
        "--runs-dir",
        str(tmp_path / "r"),
    ]
    env = {"PYTHONPATH": ROOT}
    import os

    proc = subprocess.Popen(
        [sys.executable, "-m", *base, "--run", "x"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpt = tmp_path / "m" / "x"
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.isdigit() for p in ckpt.glob("*")):
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "interrupted" in err and "checkpoint saved" in err
    stopped = Checkpointer(ckpt, create=False).latest_step()
    assert 0 < stopped < 100  # 20 epochs x 5 steps; it stopped early
    if sig == signal.SIGTERM:
        return  # the exit path is the same; the exact-resume check runs once, for SIGINT
    # --resume reads the run's saved flags: only the run, the folders and an allowed
    # change (another --chunk, after a stop in the middle of an epoch) are given
    out = base[base.index("--models-dir") :]
    p = run_cli("jaxae.train", "--run", "x", "--resume", "--chunk", "5", *out)
    assert p.returncode == 0, p.stderr[-2000:]
    p = run_cli(*base, "--run", "y")
    assert p.returncode == 0, p.stderr[-2000:]
    a, b = load(ckpt), load(tmp_path / "m" / "y")
    assert a.step == b.step == 100
    for x, y in zip(_leaves(a.state), _leaves(b.state), strict=True):
        np.testing.assert_array_equal(x, y)


def test_second_writer_is_refused(tmp_path):
    ckpt = tmp_path / "m" / "x"
    ckpt.mkdir(parents=True)
    with open(ckpt / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        p = run_cli(
            *TRAIN,
            "--epochs",
            "1",
            "--run",
            "x",
            "--models-dir",
            str(tmp_path / "m"),
            "--runs-dir",
            str(tmp_path / "r"),
            "--overwrite",
        )
    assert p.returncode == 1 and "locked" in p.stderr
    assert [q.name for q in ckpt.iterdir()] == [".lock"]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    members = tuple(Member(tiny_model(latent=k), 0) for k in (2, 4))
    tcfg = tiny_train(epochs=2)
    prog = jsweep.sweep_program(SweepConfig(members, tcfg))
    step = prog.step

    def poisoned(state, h, x, s, bkey):  # member 1 diverges in the second epoch
        state, (m,) = step(state, h, x, s, bkey)  # one group: latents 2 and 4
        m["loss"] = jnp.where(s >= 13, m["loss"].at[1].set(jnp.nan), m["loss"])
        return state, (m,)

    prog = dataclasses.replace(prog, step=poisoned)
    with pytest.raises(NonFiniteError, match=r"step 14 in member vae,latent=4"):
        run(prog, tcfg, "n", models_dir=tmp_path / "m", runs_dir=tmp_path / "r", progress=False)
    assert Checkpointer(tmp_path / "m" / "n", create=False).latest_step() == 10
    kept = load(tmp_path / "m" / "n")  # the kept checkpoint restores, and is finite
    assert kept.step == 10
    assert all(np.isfinite(a).all() for a in _leaves(kept.state))


def test_drop_nonfinite_drops_only_that_member(tmp_path):
    members = tuple(Member(tiny_model(latent=k), 0) for k in (2, 4, 8))
    tcfg = tiny_train(epochs=2)
    prog = jsweep.sweep_program(SweepConfig(members, tcfg))
    step = prog.step

    def poisoned(state, h, x, s, bkey):  # member 1's params turn NaN at step 13
        state, m = step(state, h, x, s, bkey)
        vae = state[0]
        kernel = vae["params"]["params"]["decoder"]["out"]["kernel"]
        kernel = jnp.where(s >= 12, kernel.at[1].set(jnp.nan), kernel)
        vae["params"]["params"]["decoder"]["out"]["kernel"] = kernel
        return (vae,), m

    prog = dataclasses.replace(prog, step=poisoned)
    res = run(
        prog,
        tcfg,
        "d",
        models_dir=tmp_path / "m",
        runs_dir=tmp_path / "r",
        progress=False,
        drop_nonfinite=True,
    )
    assert res["dropped"] == {"vae,latent=4,beta=1,seed=0": 14}
    loss = res["test"]["loss"]
    assert np.isfinite(loss[0]) and np.isnan(loss[1]) and np.isfinite(loss[2])


def test_nonfinite_cli_message(tmp_path):
    p = run_cli(
        *TRAIN,
        "--epochs",
        "1",
        "--lr",
        "1e30",
        "--run",
        "x",
        "--models-dir",
        str(tmp_path / "m"),
        "--runs-dir",
        str(tmp_path / "r"),
    )
    assert p.returncode == 1
    assert "non-finite loss" in p.stderr and "member" in p.stderr, p.stderr[-2000:]


def test_single_model_program_names_member():
    prog = single_program(tiny_model(), tiny_train())
    assert prog.names == ["vae,latent=2,beta=1,seed=0"]


# --- runs that remember their config ----------------------------------------------------


def _kw(tmp_path):
    return {"models_dir": tmp_path / "m", "runs_dir": tmp_path / "r", "progress": False}


def test_run_records_config_and_environment(tmp_path):
    res = run(
        single_program(tiny_model(), tiny_train(epochs=1)),
        tiny_train(epochs=1),
        "c",
        **_kw(tmp_path),
    )
    doc = json.loads((tmp_path / "m" / "c" / "config.json").read_text())
    sweep = doc["sweep"]  # one model is a sweep of one
    assert sweep["members"][0]["model"]["latent"] == 2 and sweep["train"]["batch_size"] == 128
    assert doc["argv"] == sys.argv and doc["members"] == ["vae,latent=2,beta=1,seed=0"]
    env = doc["env"]
    assert env["versions"]["jax"] == jax.__version__ and env["device_count"] == jax.device_count()
    assert env["platform"] == "cpu" and "git_commit" in env
    assert res["env"] == env


@pytest.mark.parametrize(
    "change,message",
    [
        ({"batch_size": 64}, "train.batch_size 64 differs from the run's 128"),
        ({"lr": 3e-3}, "train.lr 0.003 differs from the run's 0.001"),
        ({"data_seed": 1}, "train.data_seed 1 differs from the run's 0"),
    ],
)
def test_resume_refuses_a_changed_config(tmp_path, change, message):
    tcfg = tiny_train(epochs=1)
    run(single_program(tiny_model(), tcfg), tcfg, "c", **_kw(tmp_path))
    before = sorted(p.name for p in (tmp_path / "m" / "c").iterdir())
    other = tiny_train(epochs=2, **change)
    with pytest.raises(RunError, match=message):
        run(single_program(tiny_model(), other), other, "c", resume=True, **_kw(tmp_path))
    assert sorted(p.name for p in (tmp_path / "m" / "c").iterdir()) == before


def test_resume_refuses_other_sweep_members(tmp_path):
    def sweep(beta):
        members = (Member(tiny_model(), 0), Member(tiny_model(beta=beta), 0))
        return SweepConfig(members, tiny_train(epochs=1))

    s = sweep(2.0)
    run(jsweep.sweep_program(s), s.train, "s", **_kw(tmp_path))
    s = sweep(4.0)
    with pytest.raises(RunError, match=r"sweep.members.1.model.beta 4.0 differs from .* 2.0"):
        run(jsweep.sweep_program(s), s.train, "s", resume=True, **_kw(tmp_path))


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", "..", ""])
def test_run_names_cannot_escape(tmp_path, name):
    tcfg = tiny_train(epochs=1)
    with pytest.raises(RunError, match="plain folder name"):
        run(single_program(tiny_model(), tcfg), tcfg, name, **_kw(tmp_path))
    assert not (tmp_path / "x").exists() and not (tmp_path / "m").exists()


def test_fit_from_a_worker_thread(tmp_path):
    out = {}

    def work():
        try:
            out["res"] = fit(tiny_model(), tiny_train(epochs=1), "t", **_kw(tmp_path))
        except BaseException as e:  # noqa: BLE001 - reported below
            out["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join(300)
    assert "error" not in out, out.get("error")
    assert out["res"]["steps"] == 10


def test_callers_state_survives_an_exception_in_run(tmp_path):
    tcfg = tiny_train(epochs=1)
    prog = single_program(tiny_model(), tcfg)
    before = _leaves(prog.state)
    step = prog.step

    def poisoned(state, h, x, s, bkey):
        state, (m,) = step(state, h, x, s, bkey)  # one group of one member
        m["loss"] = jnp.where(s >= 7, jnp.nan, m["loss"])
        return state, (m,)

    prog = dataclasses.replace(prog, step=poisoned)
    with pytest.raises(NonFiniteError):
        run(prog, tcfg, "n", **_kw(tmp_path))
    assert not any(a.is_deleted() for a in jax.tree.leaves(prog.state))  # no donated buffers
    for a, b in zip(before, _leaves(prog.state), strict=True):
        np.testing.assert_array_equal(a, b)
