"""Frozen, validated configuration dataclasses.

Every user-facing mistake in a config raises ``ConfigError`` with one line that says what
is wrong; the CLIs turn it into an error message and a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

KINDS = ("ae", "vae")
LIKELIHOODS = ("bernoulli", "gaussian")


class ConfigError(ValueError):
    """A configuration value that cannot work."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class ModelConfig:
    """One model: an MLP autoencoder or VAE on flattened images.

    ``hidden`` are the encoder's hidden widths (the decoder mirrors them); ``latent`` is the
    size of z. ``likelihood`` is ``bernoulli`` (decoder outputs logits, pixels binarized,
    recon in nats) or ``gaussian`` (decoder outputs sigmoid means, recon is the per-example
    sum of squared errors, i.e. -log N(x; mean, I/2) without its constant).
    """

    kind: str = "vae"
    hidden: tuple[int, ...] = (512, 256)
    latent: int = 20
    likelihood: str = "bernoulli"
    beta: float = 1.0
    image_shape: tuple[int, int, int] = (28, 28, 1)

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        _check(self.kind in KINDS, f"kind must be one of {KINDS}, got {self.kind!r}")
        _check(
            self.likelihood in LIKELIHOODS,
            f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}",
        )
        _check(
            all(h > 0 for h in self.hidden), f"hidden widths must be positive, got {self.hidden}"
        )
        _check(int(self.latent) > 0, f"latent size must be positive, got {self.latent}")
        _check(float(self.beta) >= 0, f"beta must be >= 0, got {self.beta}")
        _check(len(self.image_shape) == 3, "image_shape must be (H, W, C)")

    @property
    def features(self) -> int:
        h, w, c = self.image_shape
        return h * w * c

    @property
    def name(self) -> str:
        widths = "-".join(str(w) for w in (self.features, *self.hidden, self.latent))
        return f"{self.kind}-{self.likelihood}-{widths}-beta{self.beta:g}"


@dataclass(frozen=True)
class TrainConfig:
    """How to train: data, optimiser, length, seeds and logging.

    ``seed`` drives the model (init and sampling noise); ``data_seed`` drives the data
    order and the dynamic binarization, which all members of a sweep share.
    """

    dataset: str = "mnist"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    data_seed: int = 0
    binarize: bool = True
    chunk: int = 100
    eval_batch: int = 1000
    max_to_keep: int = 3
    train_size: int | None = None  # use only the first N training examples (quick runs)

    def __post_init__(self):
        _check(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        _check(self.batch_size > 0, f"batch size must be positive, got {self.batch_size}")
        _check(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        _check(self.chunk > 0, f"chunk must be positive, got {self.chunk}")
        _check(self.eval_batch > 0, f"eval batch must be positive, got {self.eval_batch}")
        _check(
            self.train_size is None or self.train_size > 0,
            f"train size must be positive, got {self.train_size}",
        )


@dataclass(frozen=True)
class Member:
    """One model of a sweep: its structure, beta and seed."""

    model: ModelConfig
    seed: int = 0

    @property
    def name(self) -> str:
        m = self.model
        return f"{m.kind},latent={m.latent},beta={m.beta:g},seed={self.seed}"


@dataclass(frozen=True)
class SweepConfig:
    """Many models trained together: members share the data, widths and optimiser."""

    members: tuple[Member, ...] = field(default_factory=tuple)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(self.members))
        _check(len(self.members) > 0, "a sweep needs at least one member")
        names = [m.name for m in self.members]
        _check(len(set(names)) == len(names), "sweep members must be distinct")
        shapes = {m.model.image_shape for m in self.members}
        _check(len(shapes) == 1, "all sweep members must share one image shape")


def to_dict(cfg) -> dict:
    """A JSON-ready dict of any config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def model_from_dict(d: dict) -> ModelConfig:
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def train_from_dict(d: dict) -> TrainConfig:
    return TrainConfig(**d)


def sweep_from_dict(d: dict) -> SweepConfig:
    members = tuple(Member(model_from_dict(m["model"]), m["seed"]) for m in d["members"])
    return SweepConfig(members, train_from_dict(d["train"]))
