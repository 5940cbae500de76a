"""Small configs shared by the tests: tiny models, a slice of MNIST, few steps."""

import os
import subprocess
import sys

from jaxae.config import ModelConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = (32, 16)


def tiny_model(**kw) -> ModelConfig:
    return ModelConfig(**{"kind": "vae", "hidden": HIDDEN, "latent": 2, **kw})


def tiny_train(**kw) -> TrainConfig:
    # 1280 examples at batch 128: 10 steps per epoch, 2 chunks of 5
    return TrainConfig(**{"epochs": 2, "train_size": 1280, "chunk": 5, **kw})


def run_py(*args, env=None, timeout=300, cwd=None):
    """Run ``python ARGS`` in a subprocess; returns CompletedProcess with text output."""
    path = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    e = {**os.environ, "PYTHONPATH": path, **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        cwd=cwd or ROOT,
    )


def run_cli(*args, **kw):
    """Run ``python -m ARGS`` in a subprocess."""
    return run_py("-m", *args, **kw)


def embed(small, big):
    """``big`` (e.g. random params of a wider model) with ``small`` written into the leading
    corner of every leaf: a padded model whose padding is NOT zero, so only the latent
    mask can make it behave like ``small``."""
    import jax

    return jax.tree.map(lambda b, s: b.at[tuple(slice(0, n) for n in s.shape)].set(s), big, small)


def one_model(cfg: ModelConfig, tcfg: TrainConfig):
    """One unstacked model's ``state``, ``hyper`` and ``step`` (what a sweep stacks and
    vmaps), from the library's pieces and the seed ``tcfg.seed``."""
    from types import SimpleNamespace

    from jaxae.keys import model_keys
    from jaxae.models import Model
    from jaxae.step import init_state, make_optimizer, model_step
    from jaxae.sweep import model_hyper

    tx = make_optimizer(tcfg)
    return SimpleNamespace(
        state=init_state(cfg, tx, model_keys(tcfg.seed)["init"]),
        hyper=model_hyper(cfg, tcfg.seed, tcfg=tcfg),
        step=model_step(Model(cfg), tx, binarize=tcfg.binarize),
    )


def only_member(state):
    """The state of the one member of a one-model Program (one group of one)."""
    import jax

    (group,) = state
    return jax.tree.map(lambda a: a[0], group)


def trained(prog, tcfg, name: str, **kw):
    """Train ``prog`` (``jaxae.runner.train``); returns (result, the Program holding the
    trained state)."""
    from dataclasses import replace

    from jaxae.runner import train

    res, state = train(prog, tcfg, name, **kw)
    return res, replace(prog, state=state)
