"""The pure train step and scanned chunks of steps.

The data live on the device as uint8 ``(N, F)``; a chunk of steps is one ``lax.scan``
inside one jit call, so there is no Python loop and no host round-trip per step. Keys
come from the global step (``fold_in``, ``jaxae.keys``), never carried, so a resumed run
repeats an uninterrupted one bit for bit. ``jaxae.sweep`` vmaps the step over stacked
members; ``jaxae.runner`` drives the chunks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxae import likelihoods
from jaxae.config import ModelConfig, TrainConfig
from jaxae.losses import elbo_loss, iw_bound, log_weights
from jaxae.models import Model, init_params, latent_noise


class NonFiniteError(FloatingPointError):
    """A member's loss became NaN or Inf."""


def make_optimizer(tcfg: TrainConfig):
    """Adam with unit learning rate: ``train_step`` scales its updates by each member's
    rate (``h["lr"]``), so members with different rates share one compiled step.
    ``optax.adam(lr)`` is exactly this direction times lr (same state, too)."""
    del tcfg  # the rate is applied per member by the step
    return optax.chain(optax.scale_by_adam(), optax.scale(-1.0))


def lr_schedule(name: str, total: int) -> optax.Schedule:
    """The learning-rate multiplier of step s (0-based) of a run of ``total`` steps, as
    an optax schedule: 1 (constant), cosine decay to 0, or linear decay to 0."""
    total = max(int(total), 1)
    if name == "cosine":
        return optax.cosine_decay_schedule(1.0, total)
    if name == "linear":
        return optax.linear_schedule(1.0, 0.0, total)
    return optax.constant_schedule(1.0)


def kl_weight(beta, warmup, s):
    """beta ramped linearly from 0 over ``warmup`` steps (warmup 0: beta from the start);
    step s (0-based) trains with weight beta * min(1, (s + 1) / warmup)."""
    ramp = jnp.clip((jnp.asarray(s, jnp.float32) + 1.0) / jnp.maximum(warmup, 1.0), 0.0, 1.0)
    return beta * jnp.where(warmup > 0, ramp, 1.0)


def init_state(cfg: ModelConfig, tx, key) -> dict:
    """Fresh training state: params, optimiser state and step counter."""
    params = init_params(cfg, key)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def loss_fn(params, x, *, key, beta, mask, model: Model):
    """Batch-mean loss and metrics of one forward pass (k of them for an IWAE)."""
    if model.cfg.iw_k > 1:
        return iw_loss(params, x, key=key, beta=beta, mask=mask, model=model)
    out = model.apply(params, x, key=key, mask=mask)
    loss, aux = elbo_loss(out, x, beta=beta, likelihood=model.cfg.likelihood)
    metrics = {"loss": loss.mean(), "recon": aux["recon"].mean(), "kl": aux["kl"].mean()}
    return metrics["loss"], metrics


def iw_loss(params, x, *, key, beta, mask, model: Model):
    """Batch mean of the negative importance-weighted bound of k = ``model.cfg.iw_k``
    samples (IWAE; Burda et al. 2016, eq. 8) and its metrics.

    One encoder pass; sample s draws z = mean + sigma * eps_s with ``eps_s =
    latent_noise(fold_in(key, s), B, D)``, so column j of sample s depends only on
    (key, s, j) and a padded member draws a standalone model's noise. The gradient flows
    through every sample's weight (the bound's own gradient). ``recon`` is the mean of
    -log p(x|z) over the samples; ``kl`` the mean of log q(z|x) - log p(z), a Monte
    Carlo estimate of the KL term.
    """
    k = model.cfg.iw_k
    nll = likelihoods.get(model.cfg.likelihood).nll
    mean, logvar = model.apply(params, x, mask=mask, method=Model.encode)
    b, d = mean.shape
    eps = jax.vmap(lambda s: latent_noise(jax.random.fold_in(key, s), b, d))(jnp.arange(k))

    def log_lik(z):
        logits = model.apply(params, z.reshape(k * b, d), mask=mask, method=Model.decode)
        return -nll(logits.reshape(k, b, -1), x[None])

    log_w, lik, ratio = log_weights(log_lik, mean, logvar, eps, beta)
    loss = -iw_bound(log_w).mean()
    return loss, {"loss": loss, "recon": -lik.mean(), "kl": -ratio.mean()}


def train_step(state: dict, x, *, key, beta, mask, model: Model, tx, lr):
    """One optimiser step on batch x (B, F). Pure; returns (new state, metrics).

    ``tx``'s updates are scaled by ``lr`` (``make_optimizer``'s Adam has unit rate).
    """
    grad_fn = jax.grad(loss_fn, has_aux=True)
    grads, metrics = grad_fn(state["params"], x, key=key, beta=beta, mask=mask, model=model)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    updates = jax.tree.map(lambda u: u * lr, updates)
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def model_step(model: Model, tx, *, binarize: bool):
    """The step of one unstacked model as ``step(state, h, x, s, bkey)``.

    ``x`` are the batch's pixels in [0, 1]; a Bernoulli model binarizes them with ``bkey``,
    which depends only on the step, so every model of a sweep sees the same binary batch.
    The KL weight follows the member's warm-up (``kl_weight``), the rate its ``lr``.
    """
    binarize = binarize and likelihoods.get(model.cfg.likelihood).binarize

    def step(state, h, x, s, bkey):
        if binarize:
            x = jax.random.bernoulli(bkey, x).astype(jnp.float32)
        key = jax.random.fold_in(h["key"], s)
        beta = kl_weight(h["beta"], h["warmup"], s)
        return train_step(
            state, x, key=key, beta=beta, mask=h["mask"], model=model, tx=tx, lr=h["lr"]
        )

    return step


# --- scanned chunks of steps --------------------------------------------------------


def epoch_batches(perm_key, epoch, n: int, batch: int):
    """Indices (steps, batch) of one epoch; the last partial batch is dropped."""
    steps = n // batch
    perm = jax.random.permutation(jax.random.fold_in(perm_key, epoch), n)
    return perm[: steps * batch].reshape(steps, batch)


@functools.cache
def jit_epoch_batches(n: int, batch: int):
    """``batches(perm_key, epoch)``: ``epoch_batches`` compiled once per (n, batch)."""
    return jax.jit(lambda key, e: epoch_batches(key, e, n, batch))


def make_chunk(step, *, binarize_key, schedule: str = "constant", total: int = 1):
    """Build ``chunk(state, h, images, idx, s0)`` running ``len(idx)`` steps in one scan.

    With a ``schedule``, every per-member rate in ``h`` (each group's ``"lr"`` leaf) is
    multiplied by ``lr_schedule(schedule, total)(s)`` at step s.
    """
    factor = lr_schedule(schedule, total)

    def scaled(h, s):
        if schedule == "constant":
            return h
        f = factor(s)
        return jax.tree_util.tree_map_with_path(
            lambda path, v: v * f if getattr(path[-1], "key", None) == "lr" else v, h
        )

    def chunk(state, h, images, idx, s0):
        def body(state, xs):
            i, rows = xs
            s = s0 + i
            x = images[rows].astype(jnp.float32) / 255.0
            return step(state, scaled(h, s), x, s, jax.random.fold_in(binarize_key, s))

        return jax.lax.scan(body, state, (jnp.arange(idx.shape[0]), idx))

    return chunk


def chunk_size(steps_per_epoch: int, target: int) -> int:
    """Largest divisor of the epoch's steps not above ``target`` (whole epoch if tiny)."""
    best = max(d for d in range(1, min(target, steps_per_epoch) + 1) if steps_per_epoch % d == 0)
    return best if best * 4 >= min(target, steps_per_epoch) else steps_per_epoch


def check_finite(
    metrics: dict, s0: int, names: list[str], dropped: dict | None = None, params_finite=None
) -> list[str]:
    """Raise NonFiniteError naming the first step and member whose loss is not finite, or
    whose parameters are not after the chunk's last update.

    Args:
        metrics: per-step metrics (steps, M) of a chunk that started at global step s0.
        dropped: None (any divergence stops training), or a dict where a newly diverged
            member is recorded ({name: step}) while training goes on for the others;
            members are independent under vmap, so a dropped member's NaNs never reach
            the rest.
        params_finite: (M,) bools: each member's parameters after the chunk, all finite.
    Returns:
        one message per newly dropped member.
    """
    loss = np.asarray(metrics["loss"])
    events = [
        (int(s0 + i + 1), m, f"non-finite loss {loss[i, m]}")
        for i, m in np.argwhere(~np.isfinite(loss))
    ]
    if params_finite is not None:
        bad = np.flatnonzero(~np.asarray(params_finite, bool))
        events += [(int(s0 + loss.shape[0]), m, "non-finite parameters") for m in bad]
    out = []
    for step, m, what in events:
        if dropped is not None and names[m] in dropped:
            continue
        msg = f"{what} at step {step} in member {names[m]}"
        if dropped is None or len(dropped) + 1 == len(names):
            raise NonFiniteError(msg + "; the last good checkpoint is kept")
        dropped[names[m]] = step
        out.append(f"{msg}; member dropped, the others go on")
    return out


def all_finite(tree):
    """True when every element of every leaf of ``tree`` is finite (one bool)."""
    return jnp.stack([jnp.isfinite(a).all() for a in jax.tree.leaves(tree)]).all()
