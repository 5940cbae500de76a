"""Load a trained run from its checkpoint folder.

``load(path)`` gives a ``Loaded`` run whose members are ``config.Member``s (one model
trained by ``jaxae.train``/``fit`` is a sweep of one): per-member ``params``,
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
from jaxae.config import ConfigError, Member, SweepConfig, TrainConfig, sweep_from_dict
from jaxae.data import load as load_data
from jaxae.evaluation import test_targets
from jaxae.models import Model, latent_mask
from jaxae.sweep import (
    group_hyper,
    group_members,
    member_params,
    members_evaluate,
    restore_state,
    sweep_dict,
)


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
        sweep: the run's SweepConfig: its ``members`` (name, model config, seed) in saved
            order and its ``train`` config (dataset, seeds, binarization).
        config: the saved config; ``state``: one stacked state per group (real members
            only); ``step``: its step; ``path``: the run folder.
    """

    sweep: SweepConfig
    config: dict
    state: tuple
    step: int
    path: str

    @property
    def members(self) -> tuple[Member, ...]:
        return self.sweep.members

    @property
    def train(self) -> TrainConfig:
        return self.sweep.train

    # --- parameters ---------------------------------------------------------------------

    @property
    def groups(self) -> list[GroupView]:
        """Stacked members per group, with their latent masks."""
        out = []
        for g, group in zip(group_members(self.members), self.state, strict=True):
            ks = [self.members[i].model.latent for i in g.index]
            masks = jnp.stack([latent_mask(k, g.cfg.latent) for k in ks])
            out.append(GroupView(Model(g.cfg), group["params"], masks, g.index))
        return out

    def params(self, i: int = 0):
        """Params of member i at its own latent size (a standalone model's tree)."""
        return member_params(self.state, self.sweep, i)

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

    def posterior(self, i: int, x):
        """(mean (B, k), logvar (B, k)) of member i's posterior for prepared inputs x
        (B, F) (``test_set``); logvar is None for an autoencoder."""
        cfg = self.members[i].model
        return Model(cfg).apply(self.params(i), jnp.asarray(x), method=Model.encode)

    def encode(self, i: int, x):
        """Posterior mean (B, k) of member i for prepared inputs x (B, F)."""
        return self.posterior(i, x)[0]

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
        """Test metrics {name: [one per member]}, computed exactly as the training loop
        reported them (``sweep.members_evaluate``)."""
        x, _ = load_data(self.train.dataset, "test")
        test = jnp.asarray(x.reshape(x.shape[0], -1))
        out: dict[str, list] = {}
        for g in self.groups:
            h = group_hyper(self.members, g.index, g.model.cfg.latent, self.train)
            res = jax.jit(members_evaluate(g.model, self.train))(g.params, h, test)
            for k, v in res.items():
                out.setdefault(k, [None] * len(self.members))
                for j, i in enumerate(g.index):
                    out[k][i] = float(v[j])
        return out


def load(path, step: int | None = None, *, params_only: bool = False) -> Loaded:
    """Restore the run at ``path`` (``models/<run>`` or one step folder in it).

    Args:
        path: a run folder or one of its step folders.
        step: a step to load instead of the latest (or the step folder's).
        params_only: keep the parameters only, all that evaluation and sampling read: the
            optimizer state (two thirds of an Adam state) is restored, checked against
            its digests and let go.
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
        if config.get("type") not in ("model", "sweep"):
            raise CheckpointError(f"{run_dir} is not a jaxae checkpoint (no model config)")
        try:
            sweep = sweep_from_dict(sweep_dict(config))
        except (KeyError, TypeError, ConfigError) as e:
            raise CheckpointError(f"{run_dir} holds an unreadable jaxae config: {e}") from e
        state = restore_state(mgr, config, step)  # any saved device layout
    if params_only:
        state = tuple({"params": group["params"]} for group in state)
    if jax.process_count() > 1:  # a restored run is used locally by each process
        state = hosts.to_host(state)
    return Loaded(sweep, config, state, int(step), str(run_dir))
