"""What is trained: pure train step, scanned chunks of steps, evaluation, and ``Program``.

The data live on the device as uint8 ``(N, F)``; a chunk of steps is one ``lax.scan``
inside one jit call, so there is no Python loop and no host round-trip per step. Keys
are derived from the global step (``fold_in``), never carried, so a resumed run repeats
an uninterrupted one bit for bit. A ``Program`` bundles these pure functions for one
model (``single_program``) or a sweep (``jaxae.sweep.sweep_program``); ``jaxae.runner``
trains any Program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxae import hosts, likelihoods
from jaxae.config import HYPER, Member, ModelConfig, TrainConfig, hparams, to_dict
from jaxae.losses import elbo_loss
from jaxae.models import Model, init_params, latent_mask, latent_noise


class NonFiniteError(FloatingPointError):
    """A member's loss became NaN or Inf."""


# --- keys ---------------------------------------------------------------------------


# Each root is the seed's key folded with its own tag, so a model seed and a data seed of
# equal value still give unrelated keys (with jax's partitionable threefry,
# split(k, n)[i] == fold_in(k, i): splitting key(seed) for both would reuse keys).
MODEL_TAG, DATA_TAG, TEST_TAG = 0x4D4F44, 0x44415441, 0x54455354  # "MOD", "DATA", "TEST"


def model_keys(seed: int) -> dict:
    """One root key per model seed, split once by purpose: init, train, eval, sample."""
    root = jax.random.fold_in(jax.random.key(seed), MODEL_TAG)
    init, train, evaluate, sample = jax.random.split(root, 4)
    return {"init": init, "train": train, "eval": evaluate, "sample": sample}


def data_keys(data_seed: int) -> dict:
    """Keys shared by every model that sees the same data: order and binarization from the
    data seed; the test set's one binarization is fixed for every run (any data seed), so
    test numbers are comparable across runs."""
    perm, binarize = jax.random.split(jax.random.fold_in(jax.random.key(data_seed), DATA_TAG))
    test = jax.random.fold_in(jax.random.key(0), TEST_TAG)
    return {"perm": perm, "binarize": binarize, "test": test}


# --- state and step -----------------------------------------------------------------


def make_optimizer(tcfg: TrainConfig):
    """Adam with unit learning rate: ``train_step`` scales its updates by each member's
    rate (``h["lr"]``), so members with different rates share one compiled step.
    ``optax.adam(lr)`` is exactly this direction times lr (same state, too)."""
    del tcfg  # the rate is applied per member by the step
    return optax.chain(optax.scale_by_adam(), optax.scale(-1.0))


def lr_factor(schedule: str, s, total: int):
    """The learning-rate multiplier of step s (0-based) of ``total``: 1 (constant),
    0.5 (1 + cos(pi s / total)) (cosine) or 1 - s / total (linear)."""
    t = jnp.asarray(s, jnp.float32) / max(int(total), 1)
    if schedule == "cosine":
        return 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    if schedule == "linear":
        return 1.0 - t
    return jnp.float32(1.0)


def kl_weight(beta, warmup, s):
    """beta ramped linearly from 0 over ``warmup`` steps (warmup 0: beta from the start);
    step s (0-based) trains with weight beta * min(1, (s + 1) / warmup)."""
    ramp = jnp.clip((jnp.asarray(s, jnp.float32) + 1.0) / jnp.maximum(warmup, 1.0), 0.0, 1.0)
    return beta * jnp.where(warmup > 0, ramp, 1.0)


def host_device():
    """The host CPU device, or None where JAX runs without one (``JAX_PLATFORMS=cuda``).

    Initial states are computed there and then moved: an eager flax init compiles each
    initialiser op by op, which is cheap on the CPU and slow on an accelerator, and every
    platform then starts from the same numbers.
    """
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


def init_state(cfg: ModelConfig, tx, key) -> dict:
    """Fresh training state: params, optimiser state and step counter."""
    params = init_params(cfg, key)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def loss_fn(params, x, *, key, beta, mask, model: Model):
    """Batch-mean loss and metrics of one forward pass."""
    out = model.apply(params, x, key=key, mask=mask)
    loss, aux = elbo_loss(out, x, beta=beta, likelihood=model.cfg.likelihood)
    metrics = {"loss": loss.mean(), "recon": aux["recon"].mean(), "kl": aux["kl"].mean()}
    return metrics["loss"], metrics


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


def make_chunk(step, *, binarize_key, schedule: str = "constant", total: int = 1):
    """Build ``chunk(state, h, images, idx, s0)`` running ``len(idx)`` steps in one scan.

    With a ``schedule``, every per-member rate in ``h`` (each ``"lr"`` leaf, a single
    model's or every group's) is multiplied by ``lr_factor(schedule, s, total)`` at step s.
    """

    def scaled(h, s):
        if schedule == "constant":
            return h
        f = lr_factor(schedule, s, total)
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


# --- evaluation ----------------------------------------------------------------------


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
        var = res.pop("m2") - jnp.square(res.pop("m1"))
        res["active_units"] = (var > ACTIVE_VARIANCE).sum().astype(jnp.float32)
        return res

    return evaluate


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


def all_finite_members(prog) -> Callable:
    """``finite(state)``: whether each member's parameters are all finite, as the Program
    returns its outputs (``prog.gather`` makes them (M,) bools)."""
    return prog.finite or (lambda state: all_finite(state["params"])[None])


@functools.cache
def jit_epoch_batches(n: int, batch: int):
    """``batches(perm_key, epoch)``: ``epoch_batches`` compiled once per (n, batch)."""
    return jax.jit(lambda key, e: epoch_batches(key, e, n, batch))


# --- what the runner trains -------------------------------------------------------------


@dataclasses.dataclass
class Program:
    """What ``jaxae.runner.run`` trains. Metrics and evaluations carry a member axis (M,)."""

    names: list[str]
    state: object
    hyper: object
    step: Callable  # step(state, h, x, s, bkey) -> (state, metrics)
    evaluate: Callable  # evaluate(state, h, test) -> {name: (M,)}
    images: Callable  # images(state, h, x_test) -> {name: (M, n, H, W, C)}
    config: dict
    # one {name: value} per member for TensorBoard's HParams dashboard (config.hparams)
    hparams: list = dataclasses.field(default_factory=list)
    # the state as checkpoints hold it, and back (a sweep drops its inert padding members)
    to_saved: Callable = lambda state: state
    from_saved: Callable = lambda state: state
    # the images of the last end-of-epoch summary, on the host (set by the runner)
    last_images: dict | None = None
    # finite(state) -> (M,) bools, every parameter of each member finite (None: one model)
    finite: Callable | None = None
    # gather(outputs on the host, axis) -> the members' rows in sweep order: a sweep's
    # step, evaluate, images and finite return one output per group, padding included
    gather: Callable = lambda out, axis=0: out


# --- one model as a runner Program ----------------------------------------------------


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


def model_hyper(
    cfg: ModelConfig, seed: int, latent: int | None = None, tcfg: TrainConfig | None = None
) -> dict:
    """Per-model arrays the traced functions read: the hyperparameter axes (``HYPER``,
    e.g. beta), the latent mask (for a model padded to ``latent`` dims) and the train, eval
    and sample keys of the model's seed."""
    keys = model_keys(seed)
    return {
        **{name: jnp.float32(_hyper_value(cfg, name, tcfg)) for name in HYPER},
        "mask": latent_mask(cfg.latent, cfg.latent if latent is None else latent),
        "key": keys["train"],
        "eval_key": keys["eval"],
        "sample_key": keys["sample"],
    }


def _hyper_value(cfg: ModelConfig, name: str, tcfg: TrainConfig | None):
    """A hyperparameter's value; a model's ``lr`` of None is the training config's."""
    v = getattr(cfg, name)
    if v is None and name == "lr":
        return (tcfg or TrainConfig()).lr
    return v


def single_program(cfg: ModelConfig, tcfg: TrainConfig):
    """A runner Program training one unstacked model."""
    model, tx = Model(cfg), make_optimizer(tcfg)
    with jax.default_device(host_device()):
        state = init_state(cfg, tx, model_keys(tcfg.seed)["init"])
    # replicated on every device of every process (one device in a single process): the
    # step's data are global arrays when several processes train
    state = jax.tree.map(hosts.replicate, state)
    evaluate_one, images_one = make_evaluate(model), model_images(model)

    def evaluate(state, h, test):
        x, xt, w, n = test_arrays(test, tcfg, cfg.likelihood, tcfg.eval_batch)
        res = evaluate_one(state["params"], h, x, xt, w, h["eval_key"], n=n)
        return {k: v[None] for k, v in res.items()}

    def images(state, h, x):
        return {k: v[None] for k, v in images_one(state["params"], h, x).items()}

    return Program(
        names=[Member(cfg, tcfg.seed).name],
        state=state,
        hyper=jax.tree.map(hosts.replicate, model_hyper(cfg, tcfg.seed, tcfg=tcfg)),
        step=model_step(model, tx, binarize=tcfg.binarize),
        evaluate=evaluate,
        images=images,
        config={"type": "model", "model": to_dict(cfg), "train": to_dict(tcfg)},
        hparams=[hparams(Member(cfg, tcfg.seed), tcfg)],
    )
