import json

import jax
import jax.numpy as jnp
import numpy as np
from helpers import embed, tiny_model, tiny_train

from jaxae.losses import gaussian_log_density, iw_bound, log_weights
from jaxae.metrics import model_iw_terms, pca_mse
from jaxae.models import Model, init_params

# A linear-Gaussian model: z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I_3); p(x) is Gaussian.
W = jnp.array([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]])
B = jnp.array([0.1, -0.2, 0.3])
S2 = 0.25
X = jnp.array([[0.5, -1.0, 0.8], [1.2, 0.4, -0.3]])


def exact_log_px(x):
    cov = W @ W.T + S2 * jnp.eye(3)
    d = x - B[None]
    quad = (d @ jnp.linalg.inv(cov) * d).sum(-1)
    return -0.5 * (quad + jnp.linalg.slogdet(cov)[1] + 3 * jnp.log(2 * jnp.pi))


def posterior(x, shift=0.0):
    """Exact posterior N(m, C) (diagonal of C used), optionally shifted to make q imperfect."""
    prec = jnp.eye(2) + W.T @ W / S2
    cov = jnp.linalg.inv(prec)
    mean = (x - B[None]) @ W @ cov.T / S2
    return mean + shift, jnp.log(jnp.diag(cov))[None].repeat(x.shape[0], 0)


def log_lik(z):
    return gaussian_log_density(X[None], z @ W.T + B[None, None], jnp.full((1, 1, 3), jnp.log(S2)))


def bound(k, key, shift=0.4):
    mean, logvar = posterior(X, shift)
    eps = jax.random.normal(key, (k, *mean.shape))
    return iw_bound(log_weights(log_lik, mean, logvar, eps)[0])


def test_iw_bound_reaches_exact_marginal():
    est = bound(5000, jax.random.key(0))
    np.testing.assert_allclose(est, exact_log_px(X), atol=0.02)
    assert bool(jnp.all(bound(1, jax.random.key(0)) < exact_log_px(X)))


def test_bound_rises_with_k():
    keys = jax.random.split(jax.random.key(1), 400)
    means = [float(jax.vmap(lambda key, k=k: bound(k, key))(keys).mean()) for k in (1, 10, 100)]
    assert means[0] < means[1] < means[2] < float(exact_log_px(X).mean())


def test_elbo_is_k1_bound_in_expectation():
    mean, logvar = posterior(X, 0.4)
    eps = jax.random.normal(jax.random.key(2), (200_000, *mean.shape))
    mc = log_weights(log_lik, mean, logvar, eps)[0].mean(0)
    # analytic ELBO: E_q log p(x|z) - KL(q || p)
    var = jnp.exp(logvar)
    resid = X - (mean @ W.T + B[None])
    exp_ll = (
        -0.5 * (3 * jnp.log(2 * jnp.pi * S2) + (resid**2).sum(-1) / S2)
        - 0.5 * (var[:, None, :] * W[None] ** 2).sum((1, 2)) / S2
    )
    kl = 0.5 * (var + mean**2 - 1 - logvar).sum(-1)
    np.testing.assert_allclose(mc, exp_ll - kl, atol=0.01)


def test_padded_latent_dims_change_neither_elbo_nor_nll():
    small, big = tiny_model(latent=2), tiny_model(latent=5)
    p_small = init_params(small, jax.random.key(0))
    p_big = embed(p_small, init_params(big, jax.random.key(9)))  # non-zero padding
    x = jax.random.bernoulli(jax.random.key(1), 0.3, (4, 784)).astype(jnp.float32)
    mask = (jnp.arange(5) < 2).astype(jnp.float32)
    key = jax.random.key(3)
    a = model_iw_terms(p_small, x, jnp.ones(2), key=key, k=64, chunk=16, model=Model(small))
    b = model_iw_terms(p_big, x, mask, key=key, k=64, chunk=16, model=Model(big))
    for name in ("iw", "elbo", "elbo1"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5)


def test_pca_mse_matches_numpy():
    rng = np.random.default_rng(0)
    train = rng.random((500, 20)) @ rng.random((20, 30))
    test = rng.random((100, 20)) @ rng.random((20, 30))
    mu = train.mean(0)
    _, _, vt = np.linalg.svd(train - mu, full_matrices=False)
    for k in (1, 5, 30):
        v = vt[:k].T
        rec = (test - mu) @ v @ v.T + mu
        want = np.mean((rec - test) ** 2)
        for chunk in (10000, 128):  # all rows at once, and a sum over 4 chunks
            np.testing.assert_allclose(
                pca_mse(train, test, [k], chunk)[k], want, rtol=1e-6, atol=1e-10
            )


def test_iw_chunks_draw_independent_noise():
    # k = 2 chunks: if both chunks reused one key, their log-weights would repeat and the
    # 2-chunk bound would equal the 1-chunk bound exactly
    cfg = tiny_model(latent=3)
    params = init_params(cfg, jax.random.key(0))
    x = jax.random.bernoulli(jax.random.key(1), 0.3, (4, 784)).astype(jnp.float32)
    mask, key = jnp.ones(3), jax.random.key(5)
    one = model_iw_terms(params, x, mask, key=key, k=16, chunk=16, model=Model(cfg))
    two = model_iw_terms(params, x, mask, key=key, k=32, chunk=16, model=Model(cfg))
    assert np.all(np.abs(np.asarray(two["iw"] - one["iw"])) > 1e-4)
    np.testing.assert_array_equal(one["elbo1"], two["elbo1"])  # the first chunk is shared


def test_active_units_by_hand():
    # posterior means with variances 0.5, 0.02, 0.005 and 0 over the test set: 2 active
    from jaxae.evaluation import active_units

    rng = np.random.default_rng(0)
    z = rng.standard_normal((10000, 4)) * np.sqrt([0.5, 0.02, 0.005, 0.0])
    m1, m2 = z.mean(0), np.square(z).mean(0)  # the moments the evaluation sums
    assert active_units(m1, m2) == 2
    assert active_units(m1, m2, threshold=0.001) == 3


def test_scored_results_and_eval_record_the_classifier_s_digest(
    tmp_path, classifier_dir, monkeypatch
):
    # a sweep scored by default: results.json names the shipped classifier by its sha256;
    # jaxae.evaluate's eval.json the same, or the folder --classifier names
    import jaxae.cli
    from jaxae import quality
    from jaxae.cli import evaluate
    from jaxae.config import Member, SweepConfig
    from jaxae.pipeline import run_sweep

    sweep = SweepConfig((Member(tiny_model(), 0),), tiny_train(epochs=1))
    kw = {"models_dir": tmp_path / "m", "runs_dir": tmp_path / "r", "progress": False}
    run_sweep(sweep, "s", quality_samples=200, log=lambda m: None, **kw)
    run = tmp_path / "m" / "s"
    doc = json.loads((run / "results.json").read_text())
    digest = quality.SHIPPED["mnist"]
    shipped = {"source": "shipped", "dataset": "mnist", "digest": digest}
    assert shipped.items() <= doc["classifier"].items(), doc["classifier"]
    assert doc["members"][0]["frechet"] > 0
    monkeypatch.setattr(jaxae.cli, "console_log", lambda: None)
    argv = ["--ckpt", str(run), "--k", "0", "--quality-samples", "200", "--no-progress"]
    assert evaluate.main(argv) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["classifier"] == doc["classifier"]
    assert ev["members"][0]["frechet"] == doc["members"][0]["frechet"]
    folder = quality.default_path(classifier_dir, "mnist")  # the shipped params (conftest)
    assert evaluate.main([*argv, "--classifier", str(folder)]) == 0
    ev = json.loads((run / "eval.json").read_text())["classifier"]
    assert (ev["source"], ev["path"], ev["digest"]) == ("path", str(folder), digest)
