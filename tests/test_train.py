import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import one_model, only_member, tiny_model, tiny_train

from jaxae import evaluation, keys, sweep
from jaxae import step as train
from jaxae.config import Member, SweepConfig
from jaxae.models import latent_noise
from jaxae.runner import fit_sweep, run
from jaxae.summary import read_scalars


def _fit(tmp_path, cfg, tcfg, run_name="r", **kw):
    """Train one model; returns (the Program holding the trained state, the result)."""
    res, prog = fit_sweep(
        SweepConfig((Member(cfg, tcfg.seed),), tcfg),
        run_name,
        models_dir=tmp_path / "models",
        runs_dir=tmp_path / "runs",
        progress=False,
        **kw,
    )
    return prog, res


def _relu(a):
    return np.maximum(a, 0.0)


def numpy_vae_step(p, x, eps, beta=1.0):
    """Loss and gradients of the MLP VAE (Bernoulli, 2 hidden layers), in float64 numpy.

    An independent computation of what ``jaxae`` computes with flax, optax and jax.grad:
    the forward pass, the negative ELBO (batch mean of per-example sums) and the gradient
    by hand-written backpropagation.
    """
    e, d = p["encoder"], p["decoder"]
    a1 = x @ e["Dense_0"]["kernel"] + e["Dense_0"]["bias"]
    a2 = _relu(a1) @ e["Dense_1"]["kernel"] + e["Dense_1"]["bias"]
    h2 = _relu(a2)
    mu = h2 @ e["mean"]["kernel"] + e["mean"]["bias"]
    lv = h2 @ e["logvar"]["kernel"] + e["logvar"]["bias"]
    std = np.exp(0.5 * lv)
    z = mu + std * eps
    d1 = z @ d["Dense_0"]["kernel"] + d["Dense_0"]["bias"]
    d2 = _relu(d1) @ d["Dense_1"]["kernel"] + d["Dense_1"]["bias"]
    logits = _relu(d2) @ d["out"]["kernel"] + d["out"]["bias"]
    recon = (np.logaddexp(0.0, logits) - x * logits).sum(-1)
    kl = 0.5 * (np.exp(lv) + mu**2 - 1.0 - lv).sum(-1)
    loss = (recon + beta * kl).mean()
    n = x.shape[0]
    g = {"encoder": {}, "decoder": {}}

    def dense(tree, name, inp, dout):
        tree[name] = {"kernel": inp.T @ dout, "bias": dout.sum(0)}

    dlogits = (1.0 / (1.0 + np.exp(-logits)) - x) / n
    dense(g["decoder"], "out", _relu(d2), dlogits)
    dd2 = (dlogits @ d["out"]["kernel"].T) * (d2 > 0)
    dense(g["decoder"], "Dense_1", _relu(d1), dd2)
    dd1 = (dd2 @ d["Dense_1"]["kernel"].T) * (d1 > 0)
    dense(g["decoder"], "Dense_0", z, dd1)
    dz = dd1 @ d["Dense_0"]["kernel"].T
    dmu = dz + beta * mu / n
    dlv = dz * eps * 0.5 * std + beta * 0.5 * (np.exp(lv) - 1.0) / n
    dense(g["encoder"], "mean", h2, dmu)
    dense(g["encoder"], "logvar", h2, dlv)
    da2 = (dmu @ e["mean"]["kernel"].T + dlv @ e["logvar"]["kernel"].T) * (a2 > 0)
    dense(g["encoder"], "Dense_1", _relu(a1), da2)
    da1 = (da2 @ e["Dense_1"]["kernel"].T) * (a1 > 0)
    dense(g["encoder"], "Dense_0", x, da1)
    return loss, g


def numpy_adam_first_step(p, g, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Adam's first update (Kingma & Ba 2015, Algorithm 1, t = 1)."""
    return jax.tree.map(
        lambda w, gw: (
            w - lr * ((1 - b1) * gw / (1 - b1)) / (np.sqrt((1 - b2) * gw**2 / (1 - b2)) + eps)
        ),
        p,
        g,
    )


def test_first_two_steps_match_an_independent_numpy_computation():
    cfg, tcfg = tiny_model(latent=4), tiny_train()
    model, tx = train.Model(cfg), train.make_optimizer(tcfg)
    state = train.init_state(cfg, tx, keys.model_keys(0)["init"])
    h = sweep.model_hyper(cfg, 0)
    x = jnp.linspace(0, 1, 2 * 784).reshape(2, 784)
    step = jax.jit(train.model_step(model, tx, binarize=True))
    bkeys = [jax.random.key(1), jax.random.key(2)]
    new, m0 = step(state, h, x, jnp.int32(0), bkeys[0])
    _, m1 = step(new, h, x, jnp.int32(1), bkeys[1])  # sees the Adam update

    # the same draws (binarized pixels, reparametrization noise) fed to numpy
    def draws(s):
        xb = np.asarray(jax.random.bernoulli(bkeys[s], x), np.float64)
        key = jax.random.fold_in(h["key"], s)
        return xb, np.asarray(latent_noise(key, 2, 4), np.float64)

    p0 = jax.tree.map(lambda a: np.asarray(a, np.float64), state["params"]["params"])
    loss0, g0 = numpy_vae_step(p0, *draws(0))
    p1 = numpy_adam_first_step(p0, g0)
    loss1, _ = numpy_vae_step(p1, *draws(1))
    np.testing.assert_allclose([float(m0["loss"]), float(m1["loss"])], [loss0, loss1], rtol=2e-5)
    for a, b in zip(jax.tree.leaves(new["params"]["params"]), jax.tree.leaves(p1), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-6)


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
    prog = sweep.single_program(cfg, tcfg)
    traces = {"step": 0, "evaluate": 0}

    def counted(name, f):
        def g(*a):
            traces[name] += 1
            return f(*a)

        return g

    prog = dataclasses.replace(
        prog, step=counted("step", prog.step), evaluate=counted("evaluate", prog.evaluate)
    )
    run(prog, tcfg, "r", models_dir=tmp_path / "m", runs_dir=tmp_path / "r", progress=False)
    assert traces == {"step": 1, "evaluate": 1}  # 6 chunks and 3 evaluations, traced once


def test_resume_is_bitwise_exact(tmp_path):
    cfg = tiny_model()
    whole, _ = _fit(tmp_path / "a", cfg, tiny_train(epochs=2))
    _fit(tmp_path / "b", cfg, tiny_train(epochs=1))
    resumed, _ = _fit(tmp_path / "b", cfg, tiny_train(epochs=2), resume=True)
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_gaussian_likelihood_trains(tmp_path, kind):
    # an output of grey 0.5 everywhere scores ~0.2 per pixel; 30 steps get well below it
    cfg = tiny_model(kind=kind, likelihood="gaussian", latent=8)
    _, res = _fit(tmp_path, cfg, tiny_train(epochs=3, lr=3e-3))
    assert 0 < res["test"]["mse"][0] < 0.1
    assert (res["test"]["kl"][0] == 0.0) == (kind == "ae")
    if kind == "ae":  # recon is the per-image sum of squared errors of z = the code
        assert res["test"]["recon"][0] == pytest.approx(res["test"]["mse"][0] * 784, rel=1e-4)


def test_keys_never_collide():
    """No two keys among init/train/eval/sample/perm/binarize/test are equal, for model
    seeds 0..3 x data seeds 0..3 (split(k, n)[i] == fold_in(k, i) made them collide)."""
    owner = {}  # key data -> what it is for
    for seed in range(4):
        for data_seed in range(4):
            both = {**keys.model_keys(seed), **keys.data_keys(data_seed)}
            for name, k in both.items():
                who = (name, seed) if name in keys.model_keys(0) else (name, data_seed)
                who = ("test",) if name == "test" else who  # fixed for every run by design
                owner.setdefault(tuple(np.asarray(jax.random.key_data(k)).ravel()), set()).add(who)
    assert all(len(v) == 1 for v in owner.values()), [v for v in owner.values() if len(v) > 1]
    assert len(owner) == 4 * 4 + 4 * 2 + 1


def test_data_order_changes_per_epoch_and_drops_the_last_partial_batch():
    key = keys.data_keys(0)["perm"]
    e0, e1 = (np.asarray(train.epoch_batches(key, e, 10, 3)) for e in (0, 1))
    assert e0.shape == e1.shape == (3, 3)  # 10 examples, batch 3: 3 steps, 1 left out
    for e in (e0, e1):
        assert len(set(e.ravel())) == 9 and set(e.ravel()) <= set(range(10))
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, train.epoch_batches(key, 0, 10, 3))  # a pure function


def test_binarization_is_fresh_per_step_and_fixed_for_the_test_set():
    seen = []

    def step(state, h, x, s, bkey):  # what model_step binarizes with, recorded
        return state, {"x": jax.random.bernoulli(bkey, x).astype(jnp.float32)}

    chunk = jax.jit(train.make_chunk(step, binarize_key=keys.data_keys(0)["binarize"]))
    images = jnp.full((4, 784), 128, jnp.uint8)  # the same grey rows at every step
    idx = jnp.zeros((3, 2), jnp.int32)
    _, m = chunk(jnp.zeros(()), {}, images, idx, jnp.int32(0))
    seen = np.asarray(m["x"])  # (steps, batch, F)
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
    _, again = chunk(jnp.zeros(()), {}, images, idx[:1], jnp.int32(1))
    np.testing.assert_array_equal(np.asarray(again["x"])[0], seen[1])  # a function of the step
    x = jnp.full((5, 784), 0.5)
    tests = [evaluation.test_targets(x, tiny_train(data_seed=d), "bernoulli") for d in (0, 1, 0)]
    np.testing.assert_array_equal(tests[0], tests[1])  # fixed, whatever the data seed
    np.testing.assert_array_equal(tests[0], tests[2])
    assert set(np.unique(tests[0])) == {0.0, 1.0}


def test_epochs_before_the_last_can_evaluate_a_test_subset(tmp_path):
    # the run's first epoch on the whole of a 2000-example test set...
    from jaxae.runner import load_images

    cfg = tiny_model()
    train_x, test_x = load_images("mnist", "train")[:1280], load_images("mnist", "test")[:2500]
    small = (train_x, test_x[:2000])
    _, one = _fit(tmp_path / "a", cfg, tiny_train(epochs=1), data=small)
    # ...is what a longer run on 2500 test examples logs after its first epoch with
    # eval_examples=2000, while its last epoch and its results use all 2500
    prog, two = _fit(
        tmp_path / "b", cfg, tiny_train(epochs=2, eval_examples=2000), data=(train_x, test_x)
    )
    rows = [r for r in read_scalars(tmp_path / "b" / "runs" / "r") if "test/loss" in r]
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[0]["test/loss"] == pytest.approx(one["test"]["loss"][0], rel=1e-6)
    assert rows[1]["test/loss"] == pytest.approx(two["test"]["loss"][0], rel=1e-6)
    full = prog.gather(jax.jit(prog.evaluate)(prog.state, prog.hyper, jnp.asarray(test_x)))
    assert two["test"]["loss"][0] == pytest.approx(float(full["loss"][0]), rel=1e-6)  # all 2500


def test_active_units_of_the_evaluation_match_numpy(tmp_path):
    # 1001 test examples in batches of 1000: the 999 padded rows of the last batch must not
    # count. The mean head is rescaled so that the posterior means' variances sit on both
    # sides of the 0.01 threshold; counting the padding would halve them.
    from jaxae.models import Model
    from jaxae.runner import load_images

    cfg = tiny_model(latent=6)
    train_x, test_x = load_images("mnist", "train")[:1280], load_images("mnist", "test")[:1001]
    prog, _ = _fit(tmp_path, cfg, tiny_train(epochs=1, lr=3e-3), data=(train_x, test_x))
    xt = evaluation.test_targets(
        jnp.asarray(test_x, jnp.float32) / 255.0, tiny_train(), "bernoulli"
    )

    def variances(params):
        mean, _ = Model(cfg).apply(params, np.asarray(xt), method=Model.encode)
        return np.asarray(mean, np.float64).var(0)

    target = np.array([0.006, 0.014, 0.008, 0.012, 0.02, 0.0035])
    scale = np.sqrt(target / variances(only_member(prog.state)["params"]))
    (group,) = jax.tree.map(lambda a: a, prog.state)
    head = group["params"]["params"]["encoder"]["mean"]
    head = {  # stacked leaves: (1, ..., latent)
        k: v * scale.astype(np.float32).reshape((1,) * (v.ndim - 1) + (-1,))
        for k, v in head.items()
    }
    group["params"]["params"]["encoder"]["mean"] = head
    np.testing.assert_allclose(variances(only_member((group,))["params"]), target, rtol=1e-3)
    out = prog.gather(jax.jit(prog.evaluate)((group,), prog.hyper, jnp.asarray(test_x)))
    assert int(out["active_units"][0]) == 3


def test_kl_warmup_ramps_beta_linearly():
    w = [float(train.kl_weight(2.0, 4.0, s)) for s in range(6)]
    np.testing.assert_allclose(w, [0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert float(train.kl_weight(2.0, 0.0, 0)) == 2.0  # no warm-up: beta from the start


@pytest.mark.parametrize("warmup", [0, 4])
def test_the_step_trains_with_the_warmed_up_kl_weight(warmup):
    cfg, tcfg = tiny_model(beta=2.0, warmup=warmup), tiny_train()
    model, tx = train.Model(cfg), train.make_optimizer(tcfg)
    state = train.init_state(cfg, tx, keys.model_keys(0)["init"])
    step = jax.jit(train.model_step(model, tx, binarize=True))
    x = jnp.linspace(0, 1, 2 * 784).reshape(2, 784)
    _, m = step(state, sweep.model_hyper(cfg, 0), x, jnp.int32(1), jax.random.key(1))
    weight = 2.0 * (0.5 if warmup else 1.0)  # step 1 of a 4-step warm-up: half of beta
    assert float(m["loss"]) == pytest.approx(float(m["recon"] + weight * m["kl"]), rel=1e-6)


def _adam_reference(prog, cfg, opt, images, idx, bkey):
    """len(idx) steps of a plain optax optimiser ``opt`` on the gradients of
    ``loss_fn``, with the batches, binarization and noise keys the project's chunk uses."""
    model, h = train.Model(cfg), prog.hyper

    @jax.jit
    def one(params, opt_state, s):
        x = images[idx[s]].astype(jnp.float32) / 255.0
        x = jax.random.bernoulli(jax.random.fold_in(bkey, s), x).astype(jnp.float32)
        key = jax.random.fold_in(h["key"], s)
        grad_fn = jax.grad(train.loss_fn, has_aux=True)
        grads, _ = grad_fn(params, x, key=key, beta=h["beta"], mask=h["mask"], model=model)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = prog.state["params"]
    opt_state = opt.init(params)
    for s in range(len(idx)):
        params, opt_state = one(params, opt_state, jnp.int32(s))
    return params, opt_state


@pytest.mark.parametrize("where", ["member", "run"])
def test_a_models_learning_rate_is_the_one_it_trains_with(where):
    # 20 steps of the project's unit-rate Adam scaled by the member's rate (h["lr"]) are
    # optax.adam(lr) up to float32 rounding: the arithmetic is the same (u * -1 * lr and
    # u * -lr are equal floats) but XLA fuses the two programs differently; gradients 1 ulp
    # apart move Adam's near-zero entries by up to ~lr / 1e4 over 20 steps, while a rate off
    # by a factor moves parameters by ~lr a step
    from jaxae.runner import load_images

    lr = 3e-3  # not the default 1e-3: a rate that is dropped on the way shows
    cfg, tcfg = tiny_model(lr=lr), tiny_train()
    if where == "run":
        cfg, tcfg = tiny_model(), tiny_train(lr=lr)
    prog = one_model(cfg, tcfg)
    images = jnp.asarray(load_images("mnist", "train")[:1280])
    idx = jax.random.permutation(jax.random.key(5), 1280).reshape(20, 64)
    bkey = jax.random.key(0)
    chunk = jax.jit(train.make_chunk(prog.step, binarize_key=bkey))
    got, _ = chunk(prog.state, prog.hyper, images, idx, jnp.int32(0))
    want, _ = _adam_reference(prog, cfg, optax.adam(lr), images, idx, bkey)
    for u, v in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=lr / 300)
    moved = jax.tree.leaves(
        jax.tree.map(lambda u, v: np.abs(u - v).max(), want, prog.state["params"])
    )
    assert max(moved) > 10 * lr  # 20 steps of about lr each actually trained


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_a_scheduled_run_is_optax_adam_with_the_optax_schedule(schedule):
    # to float32 rounding only: optax computes lr * f(s) in another order than the chunk
    from jaxae.runner import load_images

    lr, total = 3e-3, 20
    cfg, tcfg = tiny_model(lr=lr), tiny_train()
    prog = one_model(cfg, tcfg)
    images = jnp.asarray(load_images("mnist", "train")[:1280])
    idx = jax.random.permutation(jax.random.key(5), 1280).reshape(total, 64)
    bkey = jax.random.key(0)
    chunk = train.make_chunk(prog.step, binarize_key=bkey, schedule=schedule, total=total)
    got, _ = jax.jit(chunk)(prog.state, prog.hyper, images, idx, jnp.int32(0))
    sched = {
        "cosine": optax.cosine_decay_schedule(lr, total),
        "linear": optax.linear_schedule(lr, 0.0, total),
    }[schedule]
    want, _ = _adam_reference(prog, cfg, optax.adam(sched), images, idx, bkey)
    const, _ = _adam_reference(prog, cfg, optax.adam(lr), images, idx, bkey)
    for u, v, c in zip(*map(jax.tree.leaves, (got["params"], want, const)), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=lr / 300)
        assert np.abs(np.asarray(v) - np.asarray(c)).max() > 1e-4  # the schedule mattered


def test_a_schedule_scales_the_rate_the_step_reads():
    # under the linear schedule over 4 steps, step 2 trains at half the rate: the same update
    # as a constant-rate step whose member rate is halved
    cfg, tcfg = tiny_model(lr=2e-3), tiny_train()
    prog = one_model(cfg, tcfg)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (256, 784)), jnp.uint8)
    idx = jnp.arange(128)[None]
    sched = jax.jit(
        train.make_chunk(prog.step, binarize_key=jax.random.key(0), schedule="linear", total=4)
    )
    const = jax.jit(train.make_chunk(prog.step, binarize_key=jax.random.key(0)))
    a, _ = sched(prog.state, prog.hyper, x, idx, jnp.int32(2))
    b, _ = const(prog.state, {**prog.hyper, "lr": jnp.float32(1e-3)}, x, idx, jnp.int32(2))
    c, _ = const(prog.state, prog.hyper, x, idx, jnp.int32(2))
    for u, v in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert any(
        not np.array_equal(u, w)
        for u, w in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(c["params"]), strict=True)
    )
