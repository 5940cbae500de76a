import json

import jax
import jax.numpy as jnp
import numpy as np
from helpers import tiny_model, tiny_train

from jaxae import step as train
from jaxae.runner import run
from jaxae.summary import read_scalars


def _fit(tmp_path, cfg, tcfg, run_name="r", **kw):
    prog = train.single_program(cfg, tcfg)
    res = run(
        prog,
        tcfg,
        run_name,
        models_dir=tmp_path / "models",
        runs_dir=tmp_path / "runs",
        progress=False,
        **kw,
    )
    return prog, res


def test_first_step_golden():
    # Regression guard for the whole step (init, binarization, noise, loss, Adam) at pinned
    # versions: the numbers were printed by this code on first run.
    cfg, tcfg = tiny_model(latent=4), tiny_train()
    model, tx = train.Model(cfg), train.make_optimizer(tcfg)
    state = train.init_state(cfg, tx, train.model_keys(0)["init"])
    h = train.model_hyper(cfg, 0)
    x = jnp.linspace(0, 1, 2 * 784).reshape(2, 784)
    step = train.model_step(model, tx, binarize=True)
    step = jax.jit(step)
    state, m0 = step(state, h, x, jnp.int32(0), jax.random.key(1))
    state, m1 = step(state, h, x, jnp.int32(1), jax.random.key(2))  # sees the Adam update
    assert int(state["step"]) == 2

    np.testing.assert_allclose([float(m0["loss"]), float(m1["loss"])], GOLDEN, rtol=1e-5)


GOLDEN = [553.41846, 593.53552]


def test_fit_learns_and_logs(tmp_path):
    prog, res = _fit(tmp_path, tiny_model(), tiny_train(epochs=3))
    assert res["steps"] == 30
    rows = read_scalars(tmp_path / "runs" / "r")
    train_loss = [r["train/loss"] for r in rows if "train/loss" in r]
    assert train_loss[-1] < train_loss[0] - 50  # 1280 examples, 30 steps: clearly learning
    assert sum("test/loss" in r for r in rows) == 3  # one test evaluation per epoch
    assert np.isfinite(res["test"]["loss"][0]) and res["timing"]["examples_per_s"] > 0
    assert list((tmp_path / "runs" / "r").glob("events.out.tfevents.*"))
    saved = json.loads((tmp_path / "models" / "r" / "results.json").read_text())
    assert saved["test"] == res["test"]


def test_no_recompile_across_epochs(tmp_path):
    cfg, tcfg = tiny_model(), tiny_train(epochs=3)
    prog = train.single_program(cfg, tcfg)
    traces = {"step": 0, "evaluate": 0}

    def counted(name, f):
        def g(*a):
            traces[name] += 1
            return f(*a)

        return g

    prog.step = counted("step", prog.step)
    prog.evaluate = counted("evaluate", prog.evaluate)
    run(prog, tcfg, "r", models_dir=tmp_path / "m", runs_dir=tmp_path / "r", progress=False)
    assert traces == {"step": 1, "evaluate": 1}  # 6 chunks and 3 evaluations, traced once


def test_resume_is_bitwise_exact(tmp_path):
    cfg = tiny_model()
    whole, _ = _fit(tmp_path / "a", cfg, tiny_train(epochs=2))
    _fit(tmp_path / "b", cfg, tiny_train(epochs=1))
    resumed, _ = _fit(tmp_path / "b", cfg, tiny_train(epochs=2), resume=True)
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ae_gaussian_trains(tmp_path):
    _, res = _fit(tmp_path, tiny_model(kind="ae", likelihood="gaussian", latent=8), tiny_train())
    assert res["test"]["kl"] == [0.0]
    assert 0 < res["test"]["mse"][0] < 0.2
