"""Image grids of a restored run's member: prior samples, reconstructions, interpolations,
manifolds, and latent scatters (the library behind ``python -m jaxae.sample``).

Every function takes a ``jaxae.restore.Loaded`` run and a member index, so one model and a
sweep's member are drawn by the same code; test digits are encoded as the training loop
evaluated them (``Loaded.test_set``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.config import SAMPLE_MODES
from jaxae.density import GaussianMixture, fit_gmm
from jaxae.models import latent_noise
from jaxae.restore import Loaded


class ModeError(ValueError):
    """A mode that does not fit the model (e.g. a manifold of an AE, which has no prior)."""


def _needs_prior(run: Loaded, i: int, mode: str):
    if run.members[i].model.kind != "vae":
        raise ModeError(f"mode {mode!r} needs a VAE: an autoencoder has no prior to sample from")


def _pick(seed: int, n: int, count: int) -> np.ndarray:
    """``count`` distinct test indices out of n, from ``seed``."""
    return np.asarray(jax.random.choice(jax.random.key(seed), n, (count,), replace=False))


DENSITIES = ("auto", "normal", "gmm")


def code_density(run: Loaded, i: int, *, k: int = 10, count: int = 10000) -> GaussianMixture:
    """A k-component Gaussian mixture fitted on member i's posterior means (codes) of the
    first ``count`` training images, inputs prepared like the test set's."""
    _, xt, _ = run.test_set(i, "train", count)
    codes = np.asarray(run.encode(i, xt))
    if not np.isfinite(codes).all():
        raise ModeError(
            f"member {run.members[i].name} has non-finite codes (it diverged): "
            "no mixture to sample from"
        )
    return fit_gmm(codes, k, seed=0, tol=1e-3)


def prior(
    run: Loaded,
    i: int,
    *,
    n: int,
    seed: int,
    temperature: float = 1.0,
    density: str = "auto",
    **_,
):
    """n decoded latent samples; (n, H, W, C) and grid columns.

    ``density``: ``normal`` draws z ~ N(0, temperature^2 I), the VAE's prior (an AE's
    codes do not follow it: decoded, it gives noise); ``gmm`` draws from a Gaussian
    mixture fitted on the training codes (``code_density``; temperature is ignored);
    ``auto``: normal for a VAE, gmm for an AE.
    """
    if density not in DENSITIES:
        raise ModeError(f"density must be one of {DENSITIES}, got {density!r}")
    cfg = run.members[i].model
    if density == "auto":
        density = "normal" if cfg.kind == "vae" else "gmm"
    if density == "gmm":
        z = code_density(run, i).sample(n, seed).astype(np.float32)
    else:
        z = temperature * latent_noise(jax.random.key(seed), n, cfg.latent)
    return np.asarray(run.decode(i, z)), int(np.ceil(np.sqrt(n)))


def recon(run: Loaded, i: int, *, n: int, seed: int, **_):
    """Test digits (odd columns) next to their reconstructions from the posterior mean."""
    x, xt, _ = run.test_set(i)
    idx = _pick(seed, len(x), n)
    shape = run.members[i].model.image_shape
    rec = np.asarray(run.reconstruct(i, xt[idx]))
    pairs = np.stack([x[idx].reshape(-1, *shape), rec], 1).reshape(-1, *shape)
    return pairs, 2 * int(np.ceil(np.sqrt(n / 2)))


def interpolate(run: Loaded, i: int, *, n: int, seed: int, steps: int = 10, **_):
    """Decoded straight paths between the latent means of random pairs of test digits."""
    _, xt, _ = run.test_set(i)
    rows = max(1, n // steps)
    mu = np.asarray(run.encode(i, xt[_pick(seed, len(xt), 2 * rows)])).reshape(rows, 2, -1)
    t = np.linspace(0, 1, steps)[None, :, None]
    z = (1 - t) * mu[:, :1] + t * mu[:, 1:]
    return np.asarray(run.decode(i, z.reshape(rows * steps, -1))), steps


def manifold(run: Loaded, i: int, *, n: int, **_):
    """Decodings over a grid of the prior's quantiles (2-D latent) or of the two leading
    principal directions of the test latent means (larger latents); a 1-D latent's are
    n decodings along its quantiles, row by row."""
    _needs_prior(run, i, "manifold")
    if run.members[i].model.latent == 1:  # a line: n decodings over the prior's quantiles
        z = np.asarray(jax.scipy.special.ndtri(jnp.linspace(0.05, 0.95, n)))[:, None]
        return np.asarray(run.decode(i, z)), int(np.ceil(np.sqrt(n)))
    side = max(2, int(np.sqrt(n)))
    q = np.asarray(jax.scipy.special.ndtri(jnp.linspace(0.05, 0.95, side)))
    g1, g2 = np.meshgrid(q, q[::-1])
    grid = np.stack([g1.ravel(), g2.ravel()], 1)
    if run.members[i].model.latent == 2:
        z = grid
    else:
        _, xt, _ = run.test_set(i)
        mu = np.asarray(run.encode(i, xt[:5000]))
        center, (vecs, scale) = mu.mean(0), _pca2(mu)
        z = center + (grid * scale) @ vecs
    return np.asarray(run.decode(i, z)), side


def _pca2(z):
    """The two leading principal directions (2, D) of z and their standard deviations."""
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    return vt[:2], s[:2] / np.sqrt(len(z) - 1)


def scatter_points(run: Loaded, i: int, *, count: int = 5000):
    """Test latent means (count, 2) and their labels: the latents themselves in 2-D, a
    PCA projection of larger ones, and a 1-D latent against its digit's label (jittered
    so that the points of one label spread into a band); returns (points, labels, axis
    names)."""
    _, xt, labels = run.test_set(i)
    mu = np.asarray(run.encode(i, xt[:count]))
    if run.members[i].model.latent == 1:
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(mu))
        return np.stack([mu[:, 0], labels[:count] + jitter], 1), labels[:count], ("z1", "label")
    if run.members[i].model.latent == 2:
        return mu, labels[:count], ("z1", "z2")
    vecs, _ = _pca2(mu)
    return (mu - mu.mean(0)) @ vecs.T, labels[:count], ("PC1 of z", "PC2 of z")


def dimension_order(run: Loaded, i: int, *, count: int = 2000):
    """Latent dims of member i, most informative first, and the score of each: a VAE's
    mean KL(q(z_d | x) || N(0, 1)) over test digits (inactive units score ~0), an AE's
    variance of the code over them."""
    _, xt, _ = run.test_set(i)
    mean, logvar = run.posterior(i, xt[:count])
    mean = np.asarray(mean, np.float64)
    if logvar is None:
        score = mean.var(0)
    else:
        lv = np.asarray(logvar, np.float64)
        score = (0.5 * (np.exp(lv) + mean**2 - 1.0 - lv)).mean(0)
    order = np.argsort(-score, kind="stable")
    return order, score[order]


def traverse(run: Loaded, i: int, *, n: int, seed: int, steps: int = 9, **_):
    """Latent traversals: from one test digit's posterior mean, each latent dim in turn
    swept over [-3, 3] (a VAE's prior units; an AE's: the code's mean +- 3 std over the
    test set), one row per dim, the most informative dim first (``dimension_order``);
    at most n // steps rows."""
    _, xt, _ = run.test_set(i)
    order, _ = dimension_order(run, i)
    rows = order[: max(1, n // steps)]
    mu = np.asarray(run.encode(i, xt[_pick(seed, len(xt), 1)]), np.float64)[0]
    t = np.linspace(-3.0, 3.0, steps)
    if run.members[i].model.kind == "vae":
        values = np.tile(t, (len(rows), 1))
    else:
        codes = np.asarray(run.encode(i, xt[:2000]), np.float64)[:, rows]
        values = codes.mean(0)[:, None] + codes.std(0)[:, None] * t[None, :]
    z = np.repeat(mu[None, None, :], steps, 1).repeat(len(rows), 0)  # (rows, steps, D)
    z[np.arange(len(rows))[:, None], np.arange(steps)[None, :], rows[:, None]] = values
    return np.asarray(run.decode(i, z.reshape(-1, mu.shape[0]))), steps


GRIDS = {
    "prior": prior,
    "recon": recon,
    "interpolate": interpolate,
    "manifold": manifold,
    "traverse": traverse,
}
assert set(GRIDS) | {"scatter"} == set(SAMPLE_MODES)
