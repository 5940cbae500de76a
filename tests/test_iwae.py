"""The importance-weighted training bound (IWAE, ``ModelConfig.iw_k``): its value against
an independent numpy computation, its growth toward the model's log-likelihood with k,
and its place in configs and sweeps. (k = 1 is the ELBO step, unchanged: the golden step
of test_train and the fixtures of test_fixtures hold it.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_model
from scipy.special import logsumexp
from scipy.stats import norm

from jaxae.config import ConfigError, Member, ModelConfig, grid
from jaxae.metrics import model_iw_terms
from jaxae.models import Model, init_params, latent_noise
from jaxae.step import loss_fn


def _setup(k, latent=3, batch=5):
    cfg = tiny_model(latent=latent, iw_k=k)
    params = init_params(cfg, jax.random.key(0))
    x = jax.random.bernoulli(jax.random.key(1), 0.3, (batch, 784)).astype(jnp.float32)
    return cfg, Model(cfg), params, x


def numpy_iw_loss(model, params, x, key, k, beta):
    """-mean_b log (1/k) sum_s w_s in float64, with log densities from scipy and sample s's
    noise from (key, s)."""
    mean, logvar = (np.asarray(a, np.float64) for a in model.apply(params, x, method=Model.encode))
    sd = np.exp(0.5 * logvar)
    xs = np.asarray(x, np.float64)
    log_w = []
    for s in range(k):
        eps = np.asarray(latent_noise(jax.random.fold_in(key, s), *mean.shape), np.float64)
        z = mean + sd * eps
        logits = np.asarray(model.apply(params, jnp.asarray(z, jnp.float32), method=Model.decode))
        log_lik = -(np.logaddexp(0, logits) - xs * logits).sum(-1)
        ratio = norm.logpdf(z).sum(-1) - norm.logpdf(z, mean, sd).sum(-1)
        log_w.append(log_lik + beta * ratio)
    return -(logsumexp(np.stack(log_w), axis=0) - np.log(k)).mean()


@pytest.mark.parametrize("k,beta", [(4, 1.0), (7, 0.5)])
def test_k_sample_loss_matches_numpy(k, beta):
    cfg, model, params, x = _setup(k)
    key = jax.random.key(7)
    mask = jnp.ones(cfg.latent)
    got, metrics = loss_fn(params, x, key=key, beta=beta, mask=mask, model=model)
    want = numpy_iw_loss(model, params, x, key, k, beta)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    assert float(metrics["loss"]) == float(got)


def test_bound_rises_with_k_toward_the_log_likelihood():
    # the batch-mean bound averaged over keys grows with k and approaches the IW estimate
    # of log p(x) with k = 5000 (the evaluation's own code, another noise layout)
    _, model, params, x = _setup(1, batch=16)
    mask = jnp.ones(3)

    def bound(k, key):
        m = Model(tiny_model(latent=3, iw_k=k)) if k > 1 else None
        if m is None:  # the IW bound of one sample, not the closed-form ELBO
            m = Model(tiny_model(latent=3, iw_k=2))
            return -float(numpy_iw_loss(m, params, x, key, 1, 1.0))
        return -float(loss_fn(params, x, key=key, beta=1.0, mask=mask, model=m)[0])

    keys = [jax.random.key(i) for i in range(8)]
    means = [np.mean([bound(k, key) for key in keys]) for k in (1, 10, 100)]
    ref = model_iw_terms(params, x, mask, key=jax.random.key(99), k=5000, chunk=500, model=model)
    log_px = float(ref["iw"].mean())
    assert means[0] < means[1] < means[2] <= log_px + 0.05, (means, log_px)
    assert log_px - means[2] < 0.5 * (log_px - means[0]), (means, log_px)


def test_iw_k_is_a_vae_axis_and_a_structure():
    with pytest.raises(ConfigError, match="iw_k"):
        ModelConfig(kind="ae", likelihood="gaussian", iw_k=5)
    with pytest.raises(ConfigError, match="iw_k"):
        ModelConfig(iw_k=0)
    members = grid(ModelConfig(), {"kind": ["vae", "ae"], "iw_k": [1, 5]}, seeds=1)
    names = [Member(m.model, m.seed).name for m in members]
    # an AE collapses the axis; k = 1 keeps the names of a sweep without the axis
    assert names == [
        "vae,latent=20,beta=1,seed=0",
        "vae,latent=20,beta=1,iw_k=5,seed=0",
        "ae,latent=20,beta=1,seed=0",
    ]
    assert ModelConfig(iw_k=5).name.endswith("-iw5") and "iw" not in ModelConfig().name
