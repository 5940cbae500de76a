"""Decode latent samples, reconstructions, interpolations, manifolds and latent scatters.

python -m jaxae.sample --ckpt models/<run> [--mode prior|recon|interpolate|manifold|scatter]
"""

from __future__ import annotations

if __name__ == "__main__":  # CLI first, so --help answers before JAX is imported
    import sys

    from jaxae.sample_cli import main

    sys.exit(main())

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxae.config import ModelConfig  # noqa: E402
from jaxae.models import Model  # noqa: E402

MODES = ("prior", "recon", "interpolate", "manifold", "scatter")


class ModeError(ValueError):
    """A mode that does not fit the model (e.g. a manifold of an AE, which has no prior)."""


def _decode(cfg: ModelConfig, params, z):
    logits = Model(cfg).apply(params, z, method=Model.decode)
    return np.asarray(jax.nn.sigmoid(logits)).reshape(-1, *cfg.image_shape)


def _encode(cfg: ModelConfig, params, x):
    xf = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1) / 255.0
    return np.asarray(Model(cfg).apply(params, xf, method=Model.encode)[0])


def _needs_prior(cfg: ModelConfig, mode: str):
    if cfg.kind != "vae":
        raise ModeError(f"mode {mode!r} needs a VAE: an autoencoder has no prior to sample from")


def prior(cfg, params, *, n, seed, temperature=1.0, **_):
    """n decoded samples of z ~ N(0, temperature^2 I); (n, H, W, C) and grid columns."""
    _needs_prior(cfg, "prior")
    z = temperature * jax.random.normal(jax.random.key(seed), (n, cfg.latent))
    return _decode(cfg, params, z), int(np.ceil(np.sqrt(n)))


def recon(cfg, params, *, n, seed, test_x, **_):
    """Test digits (odd columns) next to their reconstructions from the posterior mean."""
    idx = np.asarray(jax.random.choice(jax.random.key(seed), len(test_x), (n,), replace=False))
    x = test_x[idx]
    rec = _decode(cfg, params, _encode(cfg, params, x))
    pairs = np.stack([x.astype(np.float32) / 255.0, rec], 1).reshape(-1, *cfg.image_shape)
    return pairs, 2 * int(np.ceil(np.sqrt(n / 2)))


def interpolate(cfg, params, *, n, seed, test_x, steps=10, **_):
    """Decoded straight paths between the latent means of random pairs of test digits."""
    rows = max(1, n // steps)
    idx = np.asarray(jax.random.choice(jax.random.key(seed), len(test_x), (2 * rows,), False))
    mu = _encode(cfg, params, test_x[idx]).reshape(rows, 2, -1)
    t = np.linspace(0, 1, steps)[None, :, None]
    z = (1 - t) * mu[:, :1] + t * mu[:, 1:]
    return _decode(cfg, params, z.reshape(rows * steps, -1)), steps


def manifold(cfg, params, *, n, test_x, **_):
    """Decodings over a grid of the prior's quantiles (2-D latent) or of the two leading
    principal directions of the test latent means (larger latents)."""
    _needs_prior(cfg, "manifold")
    side = max(2, int(np.sqrt(n)))
    q = np.asarray(jax.scipy.special.ndtri(jnp.linspace(0.05, 0.95, side)))
    g1, g2 = np.meshgrid(q, q[::-1])
    grid = np.stack([g1.ravel(), g2.ravel()], 1)
    if cfg.latent == 2:
        z = grid
    else:
        mu = _encode(cfg, params, test_x[:5000])
        center, (vecs, scale) = mu.mean(0), _pca2(mu)
        z = center + (grid * scale) @ vecs
    return _decode(cfg, params, jnp.asarray(z, jnp.float32)), side


def _pca2(z):
    """The two leading principal directions (2, D) of z and their standard deviations."""
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    return vt[:2], s[:2] / np.sqrt(len(z) - 1)


def scatter_points(cfg, params, *, test_x, count=5000):
    """Test latent means (count, 2): the latents themselves in 2-D, else a PCA projection."""
    mu = _encode(cfg, params, test_x[:count])
    if cfg.latent == 2:
        return mu, ("z1", "z2")
    vecs, _ = _pca2(mu)
    return (mu - mu.mean(0)) @ vecs.T, ("PC1 of z", "PC2 of z")


GRIDS = {"prior": prior, "recon": recon, "interpolate": interpolate, "manifold": manifold}
