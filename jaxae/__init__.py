"""jaxae: autoencoders and (beta-)VAEs in JAX/Flax, many models trained as one program.

    import jaxae
    cfg = jaxae.ModelConfig(kind="vae", hidden=(512, 256), latent=20)
    result = jaxae.fit(cfg, jaxae.TrainConfig(epochs=10), "my-run")
    run = jaxae.load("models/my-run")          # config and params, ready to use

Names are imported lazily, so the command-line entry points answer ``--help`` without
starting JAX.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": "jaxae.config",
    "TrainConfig": "jaxae.config",
    "SweepConfig": "jaxae.config",
    "Member": "jaxae.config",
    "AXES": "jaxae.config",
    "LIKELIHOODS": "jaxae.likelihoods",
    "Model": "jaxae.models",
    "Encoder": "jaxae.models",
    "Decoder": "jaxae.models",
    "init_params": "jaxae.models",
    "register_architecture": "jaxae.models",
    "ARCHITECTURES": "jaxae.models",
    "elbo_loss": "jaxae.losses",
    "train_step": "jaxae.step",
    "init_state": "jaxae.step",
    "sweep_program": "jaxae.sweep",
    "run": "jaxae.runner",
    "fit": "jaxae.runner",
    "fit_sweep": "jaxae.runner",
    "Checkpointer": "jaxae.checkpoint",
    "load": "jaxae.restore",
    "evaluate_run": "jaxae.metrics",
    "run_sweep": "jaxae.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jaxae' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS})
