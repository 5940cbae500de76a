"""Load a trained model or sweep from its checkpoint folder, ready to use."""

from __future__ import annotations

import dataclasses

import jax

from jaxae.checkpoint import Checkpointer, CheckpointError, resolve
from jaxae.config import (
    ConfigError,
    ModelConfig,
    model_from_dict,
    sweep_from_dict,
    train_from_dict,
)


@dataclasses.dataclass
class Loaded:
    """A restored run. ``members`` lists (name, ModelConfig, seed); ``state`` is raw."""

    kind: str  # "model" or "sweep"
    config: dict
    state: object
    step: int
    path: str
    members: list[tuple[str, ModelConfig, int]]

    def params(self, i: int = 0):
        """Params of member i at its own latent size (the only member of a single run)."""
        if self.kind == "model":
            return self.state["params"]
        from jaxae.sweep import member_params

        return member_params(self.state, sweep_from_dict(self.config["sweep"]), i)

    def test_metrics(self) -> dict:
        """Test metrics per member, computed exactly as the training run reported them."""
        import jax.numpy as jnp
        import numpy as np

        from jaxae.runner import load_images

        if self.kind == "model":
            from jaxae.train import single_program

            cfg, tcfg = self.members[0][1], train_from_dict(self.config["train"])
            prog = single_program(cfg, tcfg)
        else:
            from jaxae.sweep import sweep_program

            sweep = sweep_from_dict(self.config["sweep"])
            tcfg, prog = sweep.train, sweep_program(sweep)
        test = jnp.asarray(load_images(tcfg.dataset, "test"))
        out = jax.jit(prog.evaluate)(self.state, prog.hyper, test)
        return {k: np.atleast_1d(np.asarray(v, np.float64)).tolist() for k, v in out.items()}

    def member_index(self, name: str | int | None) -> int:
        """Index of a member given by index or name; one clear error when it does not exist."""
        names = [m[0] for m in self.members]
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


def load(path, step: int | None = None) -> Loaded:
    """Restore the checkpoint at ``path`` (a run folder or one step folder in it).

    Raises:
        CheckpointError: missing, corrupt, or not a jaxae checkpoint.
    """
    from jaxae.sweep import sweep_shapes
    from jaxae.train import init_state, make_optimizer

    run_dir, path_step = resolve(path)
    step = path_step if step is None else step
    with Checkpointer(run_dir, create=False) as mgr:
        config = mgr.read_config(step)
        try:
            if config.get("type") == "model":
                cfg, tcfg = model_from_dict(config["model"]), train_from_dict(config["train"])
                target = jax.eval_shape(
                    lambda: init_state(cfg, make_optimizer(tcfg), jax.random.key(0))
                )
                members = [(config["members"][0], cfg, tcfg.seed)]
            elif config.get("type") == "sweep":
                sweep = sweep_from_dict(config["sweep"])
                target = sweep_shapes(sweep)
                members = [(m.name, m.model, m.seed) for m in sweep.members]
            else:
                raise CheckpointError(f"{run_dir} is not a jaxae checkpoint (no model config)")
        except (KeyError, TypeError, ConfigError) as e:
            raise CheckpointError(f"{run_dir} holds an unreadable jaxae config: {e}") from e
        state = mgr.restore(target, step)
        step = mgr.latest_step() if step is None else step
    return Loaded(config["type"], config, state, int(step), str(run_dir), members)
