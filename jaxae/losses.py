"""Per-example loss terms. Each takes batched arrays and returns one value per example.

Convention: sums over pixels and latent dims per example; callers take the batch mean.
``loss = recon + beta * kl`` (Kingma & Welling 2014, eq. 10; Higgins et al. 2017, eq. 4).
"""

from __future__ import annotations

import jax
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


# --- importance-weighted bounds (Burda et al. 2016, eq. 8) ---------------------------------


def log_weights(log_lik, mean, logvar, eps, beta=1.0):
    """log w = log p(x|z) + beta (log p(z) - log q(z|x)) at z = mean + exp(logvar / 2) eps.

    ``log p(z) - log q(z|x)`` is ``0.5 (logvar + eps^2 - z^2)`` per dim (the 2 pi terms
    cancel and ``(z - mean)^2 / exp(logvar) = eps^2``): exactly 0 in a padded dim, where
    mean = logvar = 0 and z = eps.

    Args:
        log_lik: z (k, B, D) -> log p(x | z) (k, B).
        mean, logvar: (B, D) posterior parameters.
        eps: (k, B, D) standard normal noise.
        beta: weight of the prior/posterior ratio (1: the bound; a beta-VAE's otherwise).
    Returns:
        (log w (k, B), log p(x|z) (k, B), log p(z) - log q(z|x) (k, B)); each log w is a
        single-sample ELBO estimate.
    """
    z = mean[None] + jnp.exp(0.5 * logvar)[None] * eps
    ratio = 0.5 * (logvar[None] + jnp.square(eps) - jnp.square(z)).sum(-1)
    lik = log_lik(z)
    return lik + beta * ratio, lik, ratio


def iw_bound(log_w):
    """The k-sample bound log (1/k) sum_i w_i, stably; (k, B) -> (B,)."""
    return jax.scipy.special.logsumexp(log_w, axis=0) - jnp.log(log_w.shape[0])
