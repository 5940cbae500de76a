"""Flax linen MLP autoencoder and VAE.

A model maps flattened images ``x: (B, F)`` in [0, 1] to decoder logits ``(B, F)``.
The optional latent ``mask: (D,)`` of 0/1 lets a model padded to latent size D behave
exactly like one of size ``k = mask.sum()`` (see ``jaxae.sweep``): masked dims of the
posterior equal the prior N(0, 1) and the decoder never sees them.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae.config import ModelConfig


class Encoder(nn.Module):
    """MLP encoder: returns ``(mean, logvar)``; ``logvar`` is None for a plain AE."""

    hidden: Sequence[int]
    latent: int
    stochastic: bool = True

    @nn.compact
    def __call__(self, x):
        for w in self.hidden:
            x = nn.relu(nn.Dense(w)(x))
        mean = nn.Dense(self.latent, name="mean")(x)
        logvar = nn.Dense(self.latent, name="logvar")(x) if self.stochastic else None
        return mean, logvar


class Decoder(nn.Module):
    """MLP decoder mirroring the encoder; returns logits over the ``features`` pixels."""

    hidden: Sequence[int]
    features: int

    @nn.compact
    def __call__(self, z):
        for w in reversed(self.hidden):
            z = nn.relu(nn.Dense(w)(z))
        return nn.Dense(self.features, name="out")(z)


def latent_noise(key, batch: int, dim: int):
    """Standard normal noise ``(batch, dim)`` whose column j depends only on (key, j).

    A model padded to a larger latent size therefore draws the same noise in its first
    k dims as a model of size k: the property that lets sweep members match standalone runs.
    """
    cols = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), (batch,)))
    return cols(jnp.arange(dim)).T


class Model(nn.Module):
    """Autoencoder (``kind='ae'``) or VAE (``kind='vae'``) built from a ``ModelConfig``."""

    cfg: ModelConfig

    def setup(self):
        c = self.cfg
        self.encoder = Encoder(c.hidden, c.latent, stochastic=c.kind == "vae")
        self.decoder = Decoder(c.hidden, c.features)

    def encode(self, x, mask=None):
        """Posterior parameters ``(mean, logvar)``, each (B, D); logvar is None for an AE."""
        mean, logvar = self.encoder(x)
        if mask is not None:
            mask = mask[None, :]
            mean = mean * mask
            logvar = None if logvar is None else logvar * mask
        return mean, logvar

    def decode(self, z, mask=None):
        """Decoder logits (B, F) for latents z (B, D)."""
        return self.decoder(z if mask is None else z * mask[None, :])

    def reconstruct(self, x, mask=None):
        """Decoder logits (B, F) of the posterior mean: the deterministic reconstruction."""
        mean, _ = self.encode(x, mask)
        return self.decode(mean, mask)

    def __call__(self, x, *, key=None, mask=None):
        """Encode, sample z by reparametrization (VAE) and decode.

        Returns:
            dict with ``logits`` (B, F), ``mean`` and ``z`` (B, D) and, for a VAE, ``logvar``.
        """
        mean, logvar = self.encode(x, mask)
        z = mean
        if logvar is not None:
            if key is None:
                raise ValueError("a VAE forward pass needs key= for the reparametrization noise")
            eps = latent_noise(key, x.shape[0], self.cfg.latent)
            z = mean + jnp.exp(0.5 * logvar) * eps
        out = {"logits": self.decode(z, mask), "mean": mean, "z": z}
        if logvar is not None:
            out["logvar"] = logvar
        return out


def latent_mask(k: int, d: int):
    """(d,) float mask with the first k entries 1: a latent-k model padded to size d."""
    return (jnp.arange(d) < k).astype(jnp.float32)


def init_params(cfg: ModelConfig, key):
    """Initial parameters of a model with this config."""
    x = jnp.zeros((1, cfg.features), jnp.float32)
    return Model(cfg).init({"params": key}, x, key=jax.random.key(0))
