"""Frozen, validated configuration dataclasses and the sweep axes, declared once.

Every user-facing mistake in a config raises ``ConfigError`` with one line that says what
is wrong; the CLIs turn it into an error message and a non-zero exit. The CLI flags take
their defaults and their checks from here. No JAX: the CLIs read this before parsing.

A sweep member is (structure, per-member hyperparameters, seed). ``AXES`` says which
fields vary across members and in which role; grouping, stacking, member names, result
rows, aggregation over seeds, tables and the sweep CLI's flags all read that one list.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from jaxae.likelihoods import LIKELIHOODS

KINDS = ("ae", "vae")
# Encoder/decoder architectures by name (what ``--arch`` offers). The builders live in
# ``jaxae.models.ARCHITECTURES``; ``jaxae.models.register_architecture`` adds to both.
ARCHS = {
    "mlp": "dense layers of the hidden widths; the decoder mirrors them",
    "conv": "two stride-2 3x3 convolutions (32, 64 channels), then dense layers of the "
    "hidden widths; the decoder mirrors them with sub-pixel convolutions",
}
# learning-rate schedules over a run (``TrainConfig.schedule``, ``step.lr_factor``)
SCHEDULES = ("constant", "cosine", "linear")
# what ``jaxae.generate`` draws (``python -m jaxae.sample --mode``)
SAMPLE_MODES = ("prior", "recon", "interpolate", "manifold", "traverse", "scatter")


class ConfigError(ValueError):
    """A configuration value that cannot work."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --- value checks shared by the dataclasses and the CLI flags --------------------------


def positive_int(v) -> int:
    """``v`` as an int > 0, else ConfigError."""
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"must be a positive integer, got {v}") from None
    _check(i > 0 and i == float(v), f"must be a positive integer, got {v}")
    return i


def non_negative_int(v) -> int:
    """``v`` as an int >= 0, else ConfigError."""
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"must be >= 0, got {v}") from None
    _check(i >= 0, f"must be >= 0, got {v}")
    return i


def non_negative_float(v) -> float:
    """``v`` as a float >= 0 (not NaN), else ConfigError."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"must be >= 0, got {v}") from None
    _check(f >= 0, f"must be >= 0, got {v}")
    return f


def positive_float(v) -> float:
    """``v`` as a float > 0 (finite), else ConfigError."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"must be > 0, got {v}") from None
    _check(0 < f < float("inf"), f"must be > 0, got {v}")
    return f


def _field_check(name: str, check, value):
    try:
        return check(value)
    except ConfigError as e:
        raise ConfigError(f"{name} {e}") from None


# --- one model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """One model: an MLP autoencoder or VAE on flattened images.

    ``hidden`` are the encoder's hidden widths (the decoder mirrors them); ``latent`` is the
    size of z; ``likelihood`` names an entry of ``jaxae.likelihoods.LIKELIHOODS``
    (``bernoulli``: logits, binarized pixels, recon in nats; ``gaussian``: the seed's
    squared error); ``beta`` weights the KL term (a hyperparameter: under a sweep it is
    an array the step reads, not part of the model's structure).
    """

    kind: str = "vae"
    arch: str = "mlp"
    hidden: tuple[int, ...] = (512, 256)
    latent: int = 20
    likelihood: str = "bernoulli"
    beta: float = 1.0
    image_shape: tuple[int, int, int] = (28, 28, 1)
    # KL warm-up: the KL weight rises linearly from 0 to beta over this many steps (0: none)
    warmup: int = 0
    # this model's Adam learning rate; None: the training config's ``lr``
    lr: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        _check(self.kind in KINDS, f"kind must be one of {KINDS}, got {self.kind!r}")
        _check(self.arch in ARCHS, f"arch must be one of {tuple(ARCHS)}, got {self.arch!r}")
        _check(
            self.likelihood in LIKELIHOODS,
            f"likelihood must be one of {tuple(LIKELIHOODS)}, got {self.likelihood!r}",
        )
        for h in self.hidden:
            _field_check("hidden widths", positive_int, h)
        _field_check("latent", positive_int, self.latent)
        _field_check("beta", non_negative_float, self.beta)
        _field_check("warmup", non_negative_int, self.warmup)
        if self.lr is not None:
            _field_check("learning rate", positive_float, self.lr)
        _check(len(self.image_shape) == 3, "image_shape must be (H, W, C)")
        _check(
            self.arch != "conv" or all(n % 4 == 0 for n in self.image_shape[:2]),
            f"the conv architecture needs image sides divisible by 4, got {self.image_shape}",
        )

    @property
    def features(self) -> int:
        h, w, c = self.image_shape
        return h * w * c

    @property
    def name(self) -> str:
        widths = "-".join(str(w) for w in (self.features, *self.hidden, self.latent))
        arch = "" if self.arch == "mlp" else f"{self.arch}-"
        warmup = f"-warmup{self.warmup}" if self.warmup else ""
        lr = "" if self.lr is None else f"-lr{self.lr:g}"
        return f"{self.kind}-{arch}{self.likelihood}-{widths}-beta{self.beta:g}{warmup}{lr}"


def default_likelihood(kind: str) -> str:
    """Bernoulli for a VAE (the benchmark setting), squared error for an AE (the seed's)."""
    return "bernoulli" if kind == "vae" else "gaussian"


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
    # the learning rate's decay over the run's steps: constant, cosine (to 0) or linear (to 0)
    schedule: str = "constant"
    seed: int = 0
    data_seed: int = 0
    binarize: bool = True
    chunk: int = 100
    eval_batch: int = 1000
    # test examples of the end-of-epoch evaluations before the last (TensorBoard's test
    # curves); the last epoch and the results always use the whole test set. 0: all.
    eval_examples: int = 0
    max_to_keep: int = 3
    train_size: int | None = None  # use only the first N training examples (quick runs)

    def __post_init__(self):
        _check(self.epochs > 0, f"epochs must be positive, got {self.epochs}")
        _check(self.batch_size > 0, f"batch size must be positive, got {self.batch_size}")
        _check(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        _check(
            self.schedule in SCHEDULES,
            f"schedule must be one of {SCHEDULES}, got {self.schedule!r}",
        )
        _check(self.chunk > 0, f"chunk must be positive, got {self.chunk}")
        _check(self.eval_batch > 0, f"eval batch must be positive, got {self.eval_batch}")
        _check(
            self.eval_examples >= 0,
            f"eval examples must be 0 (all) or positive, got {self.eval_examples}",
        )
        _check(
            self.train_size is None or self.train_size > 0,
            f"train size must be positive, got {self.train_size}",
        )


# --- sweep axes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """A field that varies across the members of a sweep.

    Attributes:
        name: a ``ModelConfig`` field, or ``"seed"`` (the member's model seed).
        role: ``"structure"`` (members that differ form different groups),
            ``"padded"`` (stacked in one group, padded to the group's largest value
            with a mask), ``"hyper"`` (stacked in one group; the traced step reads it
            as a per-member array) or ``"seed"``.
        flag: the sweep CLI's flag; ``values`` gives it a list, ``--seeds N`` a count.
        check: converts and validates one value (raises ConfigError).
        kinds: the model kinds the axis applies to; other kinds take the field's
            default and collapse the axis (an AE has no beta).
        help: the flag's help text.
        choices: the values allowed, when they are a closed set.
        hide_default: the member's name leaves the axis out when it holds the field's
            default (an axis added later keeps the names, and runs, of earlier sweeps).
    """

    name: str
    role: str
    flag: str
    check: object
    kinds: tuple[str, ...] = KINDS
    help: str = ""
    choices: tuple | None = None
    hide_default: bool = False

    def value(self, member: Member):
        return member.seed if self.name == "seed" else getattr(member.model, self.name)

    def label(self, v) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)


def arch_name(v) -> str:
    """``v`` if it names a registered architecture (``ARCHS``), else ConfigError."""
    _check(str(v) in ARCHS, f"arch must be one of {tuple(ARCHS)}, got {v!r}")
    return str(v)


AXES: tuple[Axis, ...] = (
    Axis("kind", "structure", "--kinds", str, help="model kinds", choices=KINDS),
    Axis(
        "arch",
        "structure",
        "--archs",
        arch_name,
        help="encoder/decoder architectures (" + ", ".join(ARCHS) + ")",
        hide_default=True,
    ),
    Axis("latent", "padded", "--latents", positive_int, help="latent sizes"),
    Axis(
        "beta",
        "hyper",
        "--betas",
        non_negative_float,
        kinds=("vae",),
        help="KL weights (VAE members; AE members ignore beta)",
    ),
    Axis(
        "warmup",
        "hyper",
        "--warmups",
        non_negative_int,
        kinds=("vae",),
        help="KL warm-up steps: beta rises linearly from 0 over that many steps (VAE "
        "members; 0: none)",
        hide_default=True,
    ),
    Axis(
        "lr",
        "hyper",
        "--lrs",
        positive_float,
        help="Adam learning rates, one per member (default: --lr for all)",
        hide_default=True,
    ),
    Axis("seed", "seed", "--seeds", positive_int, help="seeds 0..N-1 per configuration"),
)

HYPER = tuple(a.name for a in AXES if a.role == "hyper")  # per-member arrays of the step
PADDED = tuple(a.name for a in AXES if a.role == "padded")


def structure(cfg: ModelConfig) -> tuple:
    """The group key: every model field except the padded and hyper axes.

    Two members with equal keys share one architecture and are stacked; a new structural
    field of ``ModelConfig`` joins the key without being listed anywhere.
    """
    return tuple(
        (f.name, getattr(cfg, f.name))
        for f in dataclasses.fields(cfg)
        if f.name not in PADDED + HYPER
    )


@dataclass(frozen=True)
class Member:
    """One model of a sweep: its config (structure and hyperparameters) and its seed."""

    model: ModelConfig
    seed: int = 0

    @property
    def name(self) -> str:
        """``vae,latent=8,beta=1,seed=0``: the first axis bare, the others as key=value."""
        first, *rest = AXES
        defaults = ModelConfig()
        parts = [first.label(first.value(self))]
        for a in rest:
            v = a.value(self)
            if not (a.hide_default and v == getattr(defaults, a.name)):
                parts.append(f"{a.name}={a.label(v)}")
        return ",".join(parts)

    def axes(self) -> dict:
        """{axis name: value} of this member (the columns of a result row)."""
        return {a.name: a.value(self) for a in AXES}


@dataclass(frozen=True)
class SweepConfig:
    """Many models trained together: members share the data and the optimiser."""

    members: tuple[Member, ...] = field(default_factory=tuple)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(self.members))
        _check(len(self.members) > 0, "a sweep needs at least one member")
        names = [m.name for m in self.members]
        _check(len(set(names)) == len(names), "sweep members must be distinct")
        shapes = {m.model.image_shape for m in self.members}
        _check(len(shapes) == 1, "all sweep members must share one image shape")


def funnel_hidden(funnel, latent: int) -> tuple[int, ...]:
    """The hidden widths of a model cut from a funnel encoder at ``latent`` units: the
    funnel's widths before its first width <= latent.

    The seed's VAEs were one funnel [784,] 512 256 128 64 32 12 6 3 2 cut after 2, 6 and
    12 units: ``funnel_hidden(funnel, 6) == (512, 256, 128, 64, 32, 12)``.
    """
    widths = []
    for w in funnel:
        if w <= latent:
            break
        widths.append(int(w))
    return tuple(widths)


def grid(
    base: ModelConfig,
    values: dict[str, list],
    seeds: int,
    likelihoods: dict | None = None,
    funnel=None,
) -> tuple[Member, ...]:
    """Every combination of the axes' values, one member each, in ``AXES`` order.

    Args:
        base: the fields no axis sets (e.g. the hidden widths).
        values: {axis name: list of values} for the non-seed axes; missing axes keep
            ``base``'s value.
        seeds: members get seeds 0..seeds-1.
        likelihoods: {kind: likelihood name}; default ``default_likelihood(kind)``.
        funnel: widths of one funnel encoder; each member's hidden widths are the
            funnel cut above its latent size (``funnel_hidden``) instead of
            ``base.hidden``, so members of different depths form different groups.
    Returns:
        the members; an axis that does not apply to a member's kind collapses to the
        field's default, and duplicates are dropped.
    """
    defaults = ModelConfig()
    combos = [{}]
    for a in AXES:
        if a.name == "seed":
            continue
        vals = values.get(a.name, [getattr(base, a.name)])
        combos = [{**c, a.name: v} for c in combos for v in dict.fromkeys(vals)]
    members = {}
    for c in combos:
        kind = c.get("kind", base.kind)
        for a in AXES:
            if a.name in c and kind not in a.kinds:
                c[a.name] = getattr(defaults, a.name)
        lik = (likelihoods or {}).get(kind) or default_likelihood(kind)
        if funnel is not None:
            c["hidden"] = funnel_hidden(funnel, c.get("latent", base.latent))
        cfg = dataclasses.replace(base, likelihood=lik, **c)
        for s in range(seeds):
            m = Member(cfg, s)
            members.setdefault(m.name, m)
    return tuple(members.values())


def hparams(member: Member, tcfg: TrainConfig) -> dict:
    """A member's hyperparameters as TensorBoard's HParams dashboard takes them
    (str, bool or number per name): the model fields, the member's seed and the
    training settings a reader compares runs by."""
    m = member.model
    return {
        "kind": m.kind,
        "arch": m.arch,
        "likelihood": m.likelihood,
        "latent": m.latent,
        "beta": m.beta,
        "warmup": m.warmup,
        "seed": member.seed,
        "hidden": "-".join(str(h) for h in m.hidden),
        "lr": tcfg.lr if m.lr is None else m.lr,
        "lr_schedule": tcfg.schedule,
        "batch_size": tcfg.batch_size,
        "epochs": tcfg.epochs,
        "data_seed": tcfg.data_seed,
        "dataset": tcfg.dataset,
    }


# --- JSON round trips ------------------------------------------------------------------------


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
