"""Test-set evaluation and image grids of one model, as pure functions.

``make_evaluate`` gives the test metrics the training loop reports after every epoch and
that ``Loaded.test_metrics`` and ``jaxae.metrics`` reproduce from a checkpoint: the
per-example loss, recon and KL, the reconstruction MSE of z = mean and the active units.
A sweep vmaps these functions over each group's stacked members (``jaxae.sweep``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxae import likelihoods
from jaxae.config import TrainConfig
from jaxae.keys import data_keys
from jaxae.losses import elbo_loss
from jaxae.models import Model, latent_noise


def eval_sums(params, x, xt, w, *, key, beta, mask, model: Model):
    """Weighted sums over a test batch: loss, recon, kl and squared error of z = mean.

    Args:
        x: (B, F) float pixels in [0, 1] (reconstruction MSE is measured against these).
        xt: (B, F) likelihood targets (binarized for Bernoulli).
        w: (B,) 1 for real rows, 0 for padding.
    """
    # one encoder pass; the decoder sees z and the posterior mean in one batch (an AE's
    # z is its mean: one decode serves both)
    mean, logvar = model.apply(params, xt, mask=mask, method=Model.encode)
    b = xt.shape[0]
    if logvar is None:
        z, dec = mean, mean
    else:
        z = mean + jnp.exp(0.5 * logvar) * latent_noise(key, b, model.cfg.latent)
        dec = jnp.concatenate([z, mean])
    logits = model.apply(params, dec, mask=mask, method=Model.decode)
    out = {"logits": logits[:b], "mean": mean, "z": z}
    if logvar is not None:
        out["logvar"] = logvar
    loss, aux = elbo_loss(out, xt, beta=beta, likelihood=model.cfg.likelihood)
    mean_image = likelihoods.get(model.cfg.likelihood).mean
    xhat = mean_image(logits[-b:])
    sq = jnp.square(xhat - x).sum(-1)
    sums = {k: (v * w).sum() for k, v in {"loss": loss, **aux, "sqerr": sq}.items()}
    # first and second moments of the posterior means, for the active units
    sums["m1"], sums["m2"] = (mean * w[:, None]).sum(0), (jnp.square(mean) * w[:, None]).sum(0)
    return sums


def test_targets(x, tcfg: TrainConfig, likelihood: str):
    """The model inputs of test pixels x (N, F) in [0, 1]: for a binarizing likelihood,
    one Bernoulli sample of the whole set with a fixed key, else x itself."""
    if likelihoods.get(likelihood).binarize and tcfg.binarize:
        return jax.random.bernoulli(data_keys(tcfg.data_seed)["test"], x).astype(jnp.float32)
    return x


def test_arrays(images, tcfg: TrainConfig, likelihood: str, eval_batch: int):
    """Test set as float (nb, eb, F), targets and weights; binarized once with a fixed key."""
    n = images.shape[0]
    nb = -(-n // eval_batch)
    pad = nb * eval_batch - n
    x = jnp.asarray(images, jnp.float32) / 255.0
    xt = test_targets(x, tcfg, likelihood)
    w = jnp.ones(n)  # padded rows get weight 0 below

    def shape(a):
        a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
        return a.reshape(nb, eval_batch, *a.shape[1:])

    return shape(x), shape(xt), shape(w), n


# a latent dim is active when its posterior mean's variance over the data exceeds this
# (Burda et al. 2016, sec. 5.2)
ACTIVE_VARIANCE = 0.01


def active_units(m1, m2, threshold: float = ACTIVE_VARIANCE):
    """Latent dims whose posterior mean varies over the data (Burda et al. 2016, sec. 5.2).

    Args:
        m1, m2: (..., D) mean and mean square of the posterior means over the test set.
        threshold: a dim is active when its variance ``m2 - m1**2`` exceeds it.
    Returns:
        (...,) number of active dims.
    """
    return (m2 - jnp.square(m1) > threshold).sum(-1)


def make_evaluate(model: Model):
    """``evaluate(params, h, x, xt, w, eval_key, *, n)``: per-example test means of one
    model over the n real rows of the padded test batches."""

    def evaluate(params, h, x, xt, w, eval_key, *, n):
        def body(carry, xs):
            i, xb, xtb, wb = xs
            key = jax.random.fold_in(eval_key, i)
            sums = eval_sums(
                params, xb, xtb, wb, key=key, beta=h["beta"], mask=h["mask"], model=model
            )
            return jax.tree.map(jnp.add, carry, sums), None

        zero = {k: jnp.float32(0) for k in ("loss", "recon", "kl", "sqerr")}
        zero["m1"] = zero["m2"] = jnp.zeros(h["mask"].shape, jnp.float32)
        sums, _ = jax.lax.scan(body, zero, (jnp.arange(x.shape[0]), x, xt, w))
        res = {k: v / n for k, v in sums.items()}
        res["mse"] = res.pop("sqerr") / x.shape[-1]
        res["active_units"] = active_units(res.pop("m1"), res.pop("m2")).astype(jnp.float32)
        return res

    return evaluate


def model_images(model: Model, n: int = 64):
    """``images(params, h, x_test_uint8)``: prior samples and test reconstructions."""

    mean_image = likelihoods.get(model.cfg.likelihood).mean

    def images(params, h, x):
        cfg = model.cfg
        shape = (-1, *cfg.image_shape)
        xf = x.astype(jnp.float32) / 255.0
        rec = mean_image(model.apply(params, xf, mask=h["mask"], method=Model.reconstruct))
        side = jnp.stack([xf, rec], 1).reshape(shape)  # digit, reconstruction, ...
        # An AE has no prior; decoding N(0, I) anyway shows why it is not generative.
        # Column j depends on (key, j) only: a member's grid is the same in any sweep.
        z = latent_noise(h["sample_key"], n, h["mask"].shape[0])
        logits = model.apply(params, z, mask=h["mask"], method=Model.decode)
        return {"recon": side, "samples": mean_image(logits).reshape(shape)}

    return images
