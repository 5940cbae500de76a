"""Load a trained model or sweep from its checkpoint folder: one view for both layouts.

``load(path)`` gives a ``Loaded`` run whose members are ``config.Member``s, whatever the
layout (one model trained by ``jaxae.train``/``fit``, or a sweep): per-member ``params``,
``encode``/``decode``/``reconstruct`` that own the input preparation (the same binarized
test digits the training loop evaluated), and ``groups`` of stacked members for vmapped
evaluation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import hosts, likelihoods
from jaxae.checkpoint import Checkpointer, CheckpointError, resolve
from jaxae.config import (
    ConfigError,
    Member,
    TrainConfig,
    model_from_dict,
    sweep_from_dict,
    train_from_dict,
)
from jaxae.data import load as load_data
from jaxae.models import Model, latent_mask
from jaxae.step import init_state, make_optimizer, single_program, test_targets
from jaxae.sweep import group_members, member_params, replicated, sweep_program, sweep_shapes


@dataclasses.dataclass(frozen=True)
class GroupView:
    """Members sharing one structure: the padded model, stacked params, masks (G, D)."""

    model: Model
    params: object
    masks: jax.Array
    index: tuple[int, ...]


@dataclasses.dataclass
class Loaded:
    """A restored run.

    Attributes:
        layout: ``"single"`` (one unstacked model) or ``"sweep"`` (stacked groups).
        members: the run's members (name, model config, seed), in saved order.
        train: the run's TrainConfig (dataset, seeds, binarization).
        state: the raw restored state; ``step``: its step; ``path``: the run folder.
    """

    layout: str
    config: dict
    state: object
    step: int
    path: str
    members: list[Member]
    train: TrainConfig

    # --- parameters ---------------------------------------------------------------------

    @property
    def groups(self) -> list[GroupView]:
        """Stacked members per group (a single model is one group of one member)."""
        if self.layout == "single":
            cfg = self.members[0].model
            params = jax.tree.map(lambda a: a[None], self.state["params"])
            return [GroupView(Model(cfg), params, jnp.ones((1, cfg.latent)), (0,))]
        out = []
        for g, st in zip(group_members(self.members), self.state, strict=True):
            ks = [self.members[i].model.latent for i in g.index]
            masks = jnp.stack([latent_mask(k, g.cfg.latent) for k in ks])
            out.append(GroupView(Model(g.cfg), st["params"], masks, g.index))
        return out

    def params(self, i: int = 0):
        """Params of member i at its own latent size (a standalone model's tree)."""
        if self.layout == "single":
            return self.state["params"]
        return member_params(self.state, sweep_from_dict(self.config["sweep"]), i)

    # --- the model, with its input preparation -----------------------------------------------

    def test_set(
        self, i: int = 0, split: str = "test", count: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(grey pixels (N, F) in [0, 1], member i's inputs (N, F), labels (N,)).

        The inputs are what the training loop evaluated: binarized once with the run's
        test key for a Bernoulli model, the grey pixels otherwise.
        """
        x, labels = load_data(self.train.dataset, split)
        x, labels = x[:count], labels[:count]  # ``split="train"``: the training set's first
        x = jnp.asarray(x.reshape(x.shape[0], -1), jnp.float32) / 255.0
        xt = test_targets(x, self.train, self.members[i].model.likelihood)
        return np.asarray(x), np.asarray(xt), np.asarray(labels)

    def encode(self, i: int, x):
        """Posterior mean (B, k) of member i for prepared inputs x (B, F) (``test_set``)."""
        cfg = self.members[i].model
        return Model(cfg).apply(self.params(i), jnp.asarray(x), method=Model.encode)[0]

    def posterior(self, i: int, x):
        """(mean, logvar) of member i's posterior for prepared inputs x (B, F); logvar is
        None for an autoencoder."""
        cfg = self.members[i].model
        return Model(cfg).apply(self.params(i), jnp.asarray(x), method=Model.encode)

    def decode(self, i: int, z):
        """Mean images (B, H, W, C) in [0, 1] of member i's decoder at latents z (B, k)."""
        cfg = self.members[i].model
        logits = Model(cfg).apply(self.params(i), jnp.asarray(z, jnp.float32), method=Model.decode)
        return likelihoods.get(cfg.likelihood).mean(logits).reshape(-1, *cfg.image_shape)

    def reconstruct(self, i: int, x):
        """Mean images (B, H, W, C) of member i's reconstruction from the posterior mean."""
        return self.decode(i, self.encode(i, x))

    # --- lookups and checks ---------------------------------------------------------------------

    def member_index(self, name: str | int | None) -> int:
        """Index of a member given by index or name; one clear error when it does not exist."""
        names = [m.name for m in self.members]
        if name is None:
            return 0
        if isinstance(name, int) or str(name).isdigit():
            i = int(name)
            if not 0 <= i < len(names):
                raise CheckpointError(f"{self.path} has {len(names)} members; no member {i}")
            return i
        if name not in names:
            raise CheckpointError(
                f"{self.path} has no member {name!r}; members: {', '.join(names)}"
            )
        return names.index(name)

    def test_metrics(self) -> dict:
        """Test metrics per member, computed exactly as the training run reported them."""
        if self.layout == "single":
            prog = single_program(self.members[0].model, self.train)
        else:
            prog = sweep_program(sweep_from_dict(self.config["sweep"]))
        x, _ = load_data(self.train.dataset, "test")
        test = jnp.asarray(x.reshape(x.shape[0], -1))
        # the program's rows: a sweep pads each group to a multiple of the device count
        # (the checkpoint holds the real members only)
        state = prog.from_saved(self.state)
        out = jax.jit(prog.evaluate)(state, prog.hyper, hosts.replicate(test))
        out = prog.gather(hosts.to_host(out))
        return {k: np.atleast_1d(np.asarray(v, np.float64)).tolist() for k, v in out.items()}


def _target(config: dict, run_dir) -> tuple:
    """(layout, abstract state, members, TrainConfig) described by a saved config."""
    try:
        if config.get("type") == "model":
            cfg, tcfg = model_from_dict(config["model"]), train_from_dict(config["train"])
            target = jax.eval_shape(
                lambda: init_state(cfg, make_optimizer(tcfg), jax.random.key(0))
            )
            return "single", target, [Member(cfg, tcfg.seed)], tcfg
        if config.get("type") == "sweep":
            sweep = sweep_from_dict(config["sweep"])
            return "sweep", sweep_shapes(sweep), list(sweep.members), sweep.train
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{run_dir} holds an unreadable jaxae config: {e}") from e
    raise CheckpointError(f"{run_dir} is not a jaxae checkpoint (no model config)")


def load(path, step: int | None = None) -> Loaded:
    """Restore the run at ``path`` (``models/<run>`` or one step folder in it).

    Args:
        path: a run folder or one of its step folders.
        step: a step to load instead of the latest (or the step folder's).
    Returns:
        a ``Loaded`` run: ``.members``, ``.params(i)`` at member i's own latent size,
        ``.encode``/``.decode``/``.reconstruct``, ``.config`` and ``.test_metrics()``.
    Raises:
        CheckpointError: missing, corrupt, or not a jaxae checkpoint.
    """
    run_dir, path_step = resolve(path)
    step = path_step if step is None else step
    with Checkpointer(run_dir, create=False) as mgr:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint at {run_dir}")
        config = mgr.read_config(step)
        layout, target, members, tcfg = _target(config, run_dir)
        state = mgr.restore(replicated(target), step)  # any saved device layout
    if jax.process_count() > 1:  # a restored run is used locally by each process
        state = hosts.to_host(state)
    return Loaded(layout, config, state, int(step), str(run_dir), members, tcfg)
