"""Per-example loss terms. Each takes batched arrays and returns one value per example.

Convention: sums over pixels and latent dims per example; callers take the batch mean.
``loss = recon + beta * kl`` (Kingma & Welling 2014, eq. 10; Higgins et al. 2017, eq. 4).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxae import likelihoods


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) in closed form (Kingma & Welling 2014, app. B).

    Returns:
        (B,) KL per example, summed over latent dims.
    """
    return 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar).sum(-1)


def gaussian_log_density(z, mean, logvar):
    """log N(z; mean, exp(logvar)), summed over the last axis."""
    return -0.5 * (jnp.log(2 * jnp.pi) + logvar + jnp.square(z - mean) / jnp.exp(logvar)).sum(-1)


def elbo_loss(out: dict, x, *, beta, likelihood: str):
    """Negative (beta-)ELBO of a forward pass, or the AE loss when there is no logvar.

    Args:
        out: a model's output dict (``logits``, ``mean`` and, for a VAE, ``logvar``).
        x: (B, F) targets.
        beta: scalar weight of the KL term.
        likelihood: a name in ``jaxae.likelihoods.LIKELIHOODS`` (others raise).
    Returns:
        (loss, aux): loss (B,) and aux {'recon': (B,), 'kl': (B,)}.
    """
    recon = likelihoods.get(likelihood).nll(out["logits"], x)
    if "logvar" in out:
        kl = gaussian_kl(out["mean"], out["logvar"])
    else:
        kl = jnp.zeros_like(recon)
    return recon + beta * kl, {"recon": recon, "kl": kl}
