"""Flax linen autoencoder and VAE with pluggable encoder/decoder architectures.

A model maps flattened images ``x: (B, F)`` in [0, 1] to decoder logits ``(B, F)``.
The optional latent ``mask: (D,)`` of 0/1 lets a model padded to latent size D behave
exactly like one of size ``k = mask.sum()`` (see ``jaxae.sweep``): masked dims of the
posterior equal the prior N(0, 1) and the decoder never sees them.

Architectures (``ModelConfig.arch``) are pairs of linen modules built from the config by
a function in ``ARCHITECTURES``. The protocol a pair follows:

- ``encoder(x)`` with ``x: (B, F)`` flattened images in [0, 1] returns ``(mean, logvar)``,
  each ``(B, cfg.latent)``; ``logvar`` is None when ``cfg.kind == "ae"``.
- ``decoder(z)`` with ``z: (B, cfg.latent)`` returns logits ``(B, F)``.

Anything with that signature works with every likelihood, the latent mask, sweeps
(vmap over members), checkpoints, sampling and evaluation; ``register_architecture``
makes a user's pair available by name (``ModelConfig(arch="mine")``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae import config
from jaxae.config import ModelConfig

# Flax's default kernel initialiser (LeCun normal: a truncated normal scaled by the fan-in)
# computed from fewer compiled programs. Run eagerly, as ``init_params`` runs it vmapped
# over members, a truncated-normal draw compiles once per shape (most of a sweep's cold
# start on a CPU: benchmarks/README.md, "A thousand members"). With JAX's counter-based
# threefry bits (``jax_threefry_partitionable``, the default) the draws of a shape are
# the first ones of any longer draw from the same key, so every shape is cut from one
# draw per power of two; the numbers are flax's, bit for bit (``tests/test_models.py``).
LECUN_NORMAL = nn.initializers.lecun_normal()
SMALLEST_DRAW = 4096


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draws(key, size: int, dtype):
    return jax.random.truncated_normal(key, -2, 2, (size,), dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _lecun_scaled(draws, shape: tuple[int, ...], dtype):
    n = math.prod(shape)
    fan_in = shape[-2] * (n / shape[-2] / shape[-1])  # as flax computes it
    stddev = jnp.sqrt(jnp.array(1.0 / fan_in, dtype)) / jnp.array(0.87962566103423978, dtype)
    return draws[:n].reshape(shape) * stddev


def kernel_init(key, shape, dtype=jnp.float32):
    """``nn.initializers.lecun_normal()``'s numbers, cut from a draw of a power-of-two
    length (flax's own where threefry's bits are not counter-based)."""
    shape = tuple(shape)
    counter_based = (
        jax.config.jax_threefry_partitionable and str(jax.random.key_impl(key)) == "threefry2x32"
    )
    if not counter_based or len(shape) < 2:
        return LECUN_NORMAL(key, shape, dtype)
    size = max(SMALLEST_DRAW, 1 << (math.prod(shape) - 1).bit_length())
    return _lecun_scaled(_draws(key, size, dtype), shape, dtype)


def Dense(features: int, **kw) -> nn.Dense:  # noqa: N802 - a layer, named like one
    """``nn.Dense`` with ``kernel_init`` (its name in the params stays Dense_i)."""
    return nn.Dense(features, kernel_init=kernel_init, **kw)


def Conv(features: int, kernel_size, **kw) -> nn.Conv:  # noqa: N802
    """``nn.Conv`` with ``kernel_init`` (its name in the params stays Conv_i)."""
    return nn.Conv(features, kernel_size, kernel_init=kernel_init, **kw)


class Encoder(nn.Module):
    """MLP encoder (``arch="mlp"``): ``(mean, logvar)``; ``logvar`` is None for an AE."""

    hidden: Sequence[int]
    latent: int
    stochastic: bool = True

    @nn.compact
    def __call__(self, x):
        for w in self.hidden:
            x = nn.relu(Dense(w)(x))
        mean = Dense(self.latent, name="mean")(x)
        logvar = Dense(self.latent, name="logvar")(x) if self.stochastic else None
        return mean, logvar


class Decoder(nn.Module):
    """MLP decoder mirroring the encoder; returns logits over the ``features`` pixels."""

    hidden: Sequence[int]
    features: int

    @nn.compact
    def __call__(self, z):
        for w in reversed(self.hidden):
            z = nn.relu(Dense(w)(z))
        return Dense(self.features, name="out")(z)


class ConvEncoder(nn.Module):
    """Two stride-2 3x3 convolutions (32, 64 channels), then dense layers of the hidden
    widths; returns ``(mean, logvar)`` like ``Encoder``."""

    hidden: Sequence[int]
    latent: int
    image_shape: tuple[int, int, int]
    stochastic: bool = True
    channels: Sequence[int] = (32, 64)

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], *self.image_shape)
        for c in self.channels:
            x = nn.relu(Conv(c, (3, 3), strides=(2, 2), padding="SAME")(x))
        x = x.reshape(x.shape[0], -1)
        for w in self.hidden:
            x = nn.relu(Dense(w)(x))
        mean = Dense(self.latent, name="mean")(x)
        logvar = Dense(self.latent, name="logvar")(x) if self.stochastic else None
        return mean, logvar


def depth_to_space(z, r: int = 2):
    """(B, H, W, r*r*C) -> (B, r*H, r*W, C): each pixel's channels become an r x r block."""
    b, h, w, c = z.shape
    z = z.reshape(b, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
    return z.reshape(b, h * r, w * r, c // (r * r))


class ConvDecoder(nn.Module):
    """The mirror of ``ConvEncoder``: dense layers, then two 2x upsamplings (64 -> 32 ->
    image channels); returns logits (B, F).

    Each upsampling is a sub-pixel convolution: a 3x3 convolution to 4x the channels at
    the low resolution, then ``depth_to_space``. It can express a stride-2 3x3 transposed
    convolution, and its gradient avoids the dilated convolutions that XLA's CPU backend
    runs slowly (about 4x faster per step on this project's CPU).
    """

    hidden: Sequence[int]
    image_shape: tuple[int, int, int]
    channels: Sequence[int] = (32, 64)

    @nn.compact
    def __call__(self, z):
        h, w, c = self.image_shape
        scale = 2 ** len(self.channels)
        for width in reversed(self.hidden):
            z = nn.relu(Dense(width)(z))
        cells = (h // scale, w // scale, self.channels[-1])
        z = nn.relu(Dense(cells[0] * cells[1] * cells[2])(z)).reshape(-1, *cells)
        for ch in reversed(self.channels[:-1]):
            z = nn.relu(depth_to_space(Conv(4 * ch, (3, 3), padding="SAME")(z)))
        z = depth_to_space(Conv(4 * c, (3, 3), padding="SAME", name="out")(z))
        return z.reshape(z.shape[0], -1)


def _mlp(cfg: ModelConfig):
    return (
        Encoder(cfg.hidden, cfg.latent, stochastic=cfg.kind == "vae"),
        Decoder(cfg.hidden, cfg.features),
    )


def _conv(cfg: ModelConfig):
    return (
        ConvEncoder(cfg.hidden, cfg.latent, cfg.image_shape, stochastic=cfg.kind == "vae"),
        ConvDecoder(cfg.hidden, cfg.image_shape),
    )


# name -> build(cfg) -> (encoder, decoder); the names are ``config.ARCHS``
ARCHITECTURES: dict[str, Callable] = {"mlp": _mlp, "conv": _conv}


def register_architecture(name: str, build: Callable, help: str = "") -> None:
    """Makes ``ModelConfig(arch=name)`` build its encoder and decoder with ``build(cfg)``.

    ``build`` returns ``(encoder, decoder)`` linen modules following the protocol in this
    module's docstring. Register before building configs (and before ``jaxae.load`` of a
    run trained with it, in the loading process).
    """
    ARCHITECTURES[name] = build
    config.ARCHS[name] = help or f"user architecture {name}"


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
        self.encoder, self.decoder = ARCHITECTURES[self.cfg.arch](self.cfg)

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
    """Initial parameters of a model with this config.

    Flax's ``lazy_init`` runs only the initialisers, not the forward pass on a dummy
    batch (the same numbers as ``init``; eagerly, fewer ops to compile)."""
    x = jax.ShapeDtypeStruct((1, cfg.features), jnp.float32)
    noise_key = jax.eval_shape(lambda: jax.random.key(0))
    return Model(cfg).lazy_init({"params": key}, x, key=noise_key)
