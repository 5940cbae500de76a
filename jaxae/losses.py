"""Per-example loss terms. Each takes batched arrays and returns one value per example.

Convention: sums over pixels and latent dims per example; callers take the batch mean.
``loss = recon + beta * kl`` (Kingma & Welling 2014, eq. 10; Higgins et al. 2017, eq. 4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def bernoulli_nll(logits, x):
    """-log p(x | logits) under independent Bernoullis, in nats.

    Args:
        logits: (B, F) decoder logits.
        x: (B, F) targets in [0, 1] (binary for a proper likelihood).
    Returns:
        (B,) negative log-likelihood per example.
    """
    return optax.sigmoid_binary_cross_entropy(logits, x).sum(-1)


def squared_error(logits, x):
    """Sum of squared errors between sigmoid(logits) and x: -log N(x; mean, I/2) + const.

    Returns:
        (B,) per-example sum over pixels.
    """
    return jnp.square(jax.nn.sigmoid(logits) - x).sum(-1)


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) in closed form (Kingma & Welling 2014, app. B).

    Returns:
        (B,) KL per example, summed over latent dims.
    """
    return 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar).sum(-1)


def gaussian_log_density(z, mean, logvar):
    """log N(z; mean, exp(logvar)), summed over the last axis."""
    return -0.5 * (jnp.log(2 * jnp.pi) + logvar + jnp.square(z - mean) / jnp.exp(logvar)).sum(-1)


def recon_loss(likelihood: str, logits, x):
    """Reconstruction term for ``likelihood`` in {'bernoulli', 'gaussian'}; (B,)."""
    if likelihood == "bernoulli":
        return bernoulli_nll(logits, x)
    return squared_error(logits, x)


def elbo_loss(out: dict, x, *, beta, likelihood: str):
    """Negative (beta-)ELBO of a forward pass, or the AE loss when there is no logvar.

    Args:
        out: a model's output dict (``logits``, ``mean`` and, for a VAE, ``logvar``).
        x: (B, F) targets.
        beta: scalar weight of the KL term.
        likelihood: 'bernoulli' or 'gaussian'.
    Returns:
        (loss, aux): loss (B,) and aux {'recon': (B,), 'kl': (B,)}.
    """
    recon = recon_loss(likelihood, out["logits"], x)
    if "logvar" in out:
        kl = gaussian_kl(out["mean"], out["logvar"])
    else:
        kl = jnp.zeros_like(recon)
    return recon + beta * kl, {"recon": recon, "kl": kl}
