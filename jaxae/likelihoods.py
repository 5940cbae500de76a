"""Likelihoods p(x | z) of the decoder, registered by name in ``LIKELIHOODS``.

The decoder always outputs logits (B, F); a likelihood says what they mean: the negative
log-likelihood of targets, the mean image, how grey pixels become training targets, and
whether the NLL is a normalised density (so that ELBOs and importance-weighted bounds
are log-likelihood bounds in nats). Every other module reads this one dict: the CLI's
``--likelihood`` choices, config validation, the loss, target preparation, evaluation and
sampling. An unknown name is an error (``get``), never a fallback.

JAX is imported inside the functions so that the command-line ``--help`` (which reads
the registry's names) answers without starting JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Likelihood:
    """One likelihood of the decoder.

    Attributes:
        name: registry key, e.g. ``"bernoulli"``.
        nll: ``(logits (B, F), x (B, F)) -> (B,)`` per-example negative log-likelihood
            (summed over pixels).
        mean: ``logits -> (B, F)`` the mean image in [0, 1].
        binarize: training targets are dynamically binarized grey pixels (a fresh
            Bernoulli sample per step; the test set once, with a fixed key).
        is_density: ``nll`` is -log of a normalised density in nats, so the ELBO and the
            importance-weighted bound are bounds on log p(x).
        unit: what ``nll`` is measured in, for tables.
    """

    name: str
    nll: Callable
    mean: Callable
    binarize: bool
    is_density: bool
    unit: str


def sigmoid_mean(logits):
    """Mean image sigmoid(logits) in [0, 1]."""
    import jax

    return jax.nn.sigmoid(logits)


def bernoulli_nll(logits, x):
    """-log p(x | logits) under independent Bernoullis, in nats.

    Args:
        logits: (B, F) decoder logits.
        x: (B, F) targets in [0, 1] (binary for a proper likelihood).
    Returns:
        (B,) negative log-likelihood per example.
    """
    import optax

    return optax.sigmoid_binary_cross_entropy(logits, x).sum(-1)


def squared_error(logits, x):
    """Sum of squared errors between sigmoid(logits) and x: -log N(x; mean, I/2) + const.

    Returns:
        (B,) per-example sum over pixels.
    """
    import jax.numpy as jnp

    return jnp.square(sigmoid_mean(logits) - x).sum(-1)


LIKELIHOODS: dict[str, Likelihood] = {
    "bernoulli": Likelihood(
        "bernoulli", bernoulli_nll, sigmoid_mean, binarize=True, is_density=True, unit="nats"
    ),
    # The seed's MSE loss: a Gaussian of fixed variance 1/2 without its constant, so
    # it is not a normalised density and gets no likelihood bounds.
    "gaussian": Likelihood(
        "gaussian", squared_error, sigmoid_mean, binarize=False, is_density=False, unit="SSE"
    ),
}


def bounds_log_likelihood(name: str, binarize: bool) -> bool:
    """Whether a model's ELBO and IW bound are bounds on log p(x) in nats: its likelihood
    is a normalised density of the targets it was given. A Bernoulli likelihood of grey
    pixels (``binarize=False``) is a cross-entropy, not a density of those targets."""
    lik = get(name)
    return lik.is_density and (binarize or not lik.binarize)


class UnknownLikelihood(ValueError):
    """A likelihood name that is not in ``LIKELIHOODS``."""


def get(name: str) -> Likelihood:
    """The registered likelihood ``name``; raises ``UnknownLikelihood`` for any other."""
    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise UnknownLikelihood(
            f"likelihood must be one of {tuple(LIKELIHOODS)}, got {name!r}"
        ) from None
