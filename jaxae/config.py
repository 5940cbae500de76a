"""Frozen, validated configuration dataclasses and the sweep axes, declared once.

Every field of ``ModelConfig`` and ``TrainConfig`` carries its metadata (``option``): the
check that converts and validates it, its help text, its command-line flag and whether
a resumed run may change it. ``__post_init__`` applies the checks, and the CLI builds its
flags from the same metadata, so a mistake reads the same in Python and on the command
line: ``ConfigError`` with one line that names the field. No JAX: the CLIs read this
before parsing.

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
# learning-rate schedules over a run (``TrainConfig.schedule``, ``step.lr_schedule``)
SCHEDULES = ("constant", "cosine", "linear")
KEEP = ("all", "params")  # what the checkpoints before the last epoch's hold
# what ``jaxae.generate`` draws (``python -m jaxae.sample --mode``)
SAMPLE_MODES = ("prior", "recon", "interpolate", "manifold", "traverse", "scatter")


class ConfigError(ValueError):
    """A configuration value that cannot work."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --- value checks: the fields' validation and the CLI flags' argparse types --------------
# Each converts a value (a Python value or a command-line string) or raises ConfigError
# saying what the value must be; the caller puts the field's or the flag's name in front.


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


def integer(v) -> int:
    """``v`` as an int (a seed), else ConfigError."""
    try:
        i = int(v)
        _check(i == float(v), "")
    except (TypeError, ValueError, ConfigError):
        raise ConfigError(f"must be an integer, got {v}") from None
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


def text(v) -> str:
    """``v`` as a non-empty str, else ConfigError."""
    _check(isinstance(v, str) and v != "", f"must be a non-empty string, got {v!r}")
    return v


def boolean(v) -> bool:
    """``v`` if it is True or False (0 and 1 too), else ConfigError."""
    _check(isinstance(v, bool | int) and v in (0, 1), f"must be True or False, got {v!r}")
    return bool(v)


def one_of(choices):
    """A check that accepts the members of ``choices``; a registry (a dict) is read at
    each call, so entries added later are accepted."""

    def check(v):
        _check(v in choices, f"must be one of {tuple(choices)}, got {v!r}")
        return v

    return check


def optional(check):
    """A check that accepts None (the field's "not set") and whatever ``check`` accepts."""

    def check_or_none(v):
        return None if v is None else check(v)

    check_or_none.__name__ = check.__name__
    return check_or_none


# --- field metadata -----------------------------------------------------------------------


def option(
    default,
    *,
    help: str,
    check=None,
    choices=None,
    nargs: int | str | None = None,
    flag: str | None = None,
    cli: bool = True,
    resumable: bool = False,
    hparam: bool | str = False,
):
    """A config field with its metadata: the one description the dataclass's validation,
    the CLI's flag, the resume comparison and the HParams record read.

    Args:
        default: the field's default.
        help: what the field means (the flag's help text).
        check: converts and validates one value (raises ConfigError); with ``nargs``,
            one element of the field's tuple.
        choices: the allowed values, when they are a closed set or a registry (then the
            check is ``one_of(choices)`` and the flag offers them).
        nargs: the field is a tuple: ``"*"`` any length, an int that many values.
        flag: the command-line flag when it is not ``--field-name``; a ``--no-NAME`` flag
            of a boolean field sets it to False.
        cli: False when no command has a flag for the field.
        resumable: a resumed run may change the field (its length, how steps are
            chunked, evaluation and checkpoint bookkeeping); any other change is refused.
        hparam: the field is recorded for TensorBoard's HParams dashboard, under its own
            name (True) or under the name given.
    """
    metadata = {
        "help": help,
        "check": one_of(choices) if check is None else check,
        "choices": choices,
        "nargs": nargs,
        "flag": flag,
        "cli": cli,
        "resumable": resumable,
        "hparam": hparam,
    }
    return field(default=default, metadata=metadata)


def flag_name(f: dataclasses.Field) -> str | None:
    """The command-line flag of config field ``f`` (``--batch-size``), None if it has none."""
    if not f.metadata["cli"]:
        return None
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def check_field(f: dataclasses.Field, value):
    """``value`` converted and validated by field ``f``'s check; ConfigError names the field."""
    check, nargs = f.metadata["check"], f.metadata["nargs"]
    try:
        if nargs is None:
            return check(value)
        try:
            values = tuple(value)
        except TypeError:
            raise ConfigError(f"must be a sequence, got {value!r}") from None
        _check(nargs == "*" or len(values) == nargs, f"must have {nargs} values, got {value}")
        return tuple(check(v) for v in values)
    except ConfigError as e:
        raise ConfigError(f"{f.name} {e}") from None


def _validate(cfg) -> None:
    """Replace every field of the frozen dataclass ``cfg`` by its checked value."""
    for f in dataclasses.fields(cfg):
        object.__setattr__(cfg, f.name, check_field(f, getattr(cfg, f.name)))


# --- one model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """One model: an autoencoder or VAE on images (an MLP reads them flattened).

    ``hidden`` are the encoder's hidden widths (the decoder mirrors them); ``latent`` is the
    size of z; ``likelihood`` names an entry of ``jaxae.likelihoods.LIKELIHOODS``
    (``bernoulli``: logits, binarized pixels, recon in nats; ``gaussian``: squared
    error); ``beta`` weights the KL term (a hyperparameter: under a sweep it is an array
    the step reads, not part of the model's structure).
    """

    kind: str = option("vae", choices=KINDS, help="model kind", hparam=True)
    arch: str = option(
        "mlp",
        choices=ARCHS,
        help="encoder/decoder: " + "; ".join(f"{k}: {v}" for k, v in ARCHS.items()),
        hparam=True,
    )
    hidden: tuple[int, ...] = option(
        (512, 256),
        check=positive_int,
        nargs="*",
        help="encoder hidden widths (dense layers); the decoder mirrors them",
        hparam=True,
    )
    latent: int = option(20, check=positive_int, help="latent size", hparam=True)
    likelihood: str = option(
        "bernoulli",
        choices=LIKELIHOODS,
        help="decoder likelihood (default: bernoulli for a VAE, gaussian, i.e. squared "
        "error, for an AE)",
        hparam=True,
    )
    beta: float = option(1.0, check=non_negative_float, help="weight of the KL term", hparam=True)
    image_shape: tuple[int, int, int] = option(
        (28, 28, 1), check=positive_int, nargs=3, cli=False, help="(height, width, channels)"
    )
    warmup: int = option(
        0,
        check=non_negative_int,
        help="KL warm-up: beta rises linearly from 0 over this many steps (0: none)",
        hparam=True,
    )
    lr: float | None = option(
        None,
        check=optional(positive_float),
        cli=False,  # a sweep's --lrs axis sets it per member
        help="this model's Adam learning rate (None: the training config's lr)",
        hparam=True,
    )
    iw_k: int = option(
        1,
        check=positive_int,
        help="samples of the bound a VAE trains on: 1 is the ELBO, k > 1 the "
        "importance-weighted bound of k samples (IWAE)",
        hparam=True,
    )

    def __post_init__(self):
        _validate(self)
        _check(
            self.iw_k == 1 or self.kind == "vae",
            f"iw_k is the sample count of a VAE's bound; an {self.kind} has none (got {self.iw_k})",
        )
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
        iw = f"-iw{self.iw_k}" if self.iw_k > 1 else ""
        return f"{self.kind}-{arch}{self.likelihood}-{widths}-beta{self.beta:g}{warmup}{lr}{iw}"


def default_likelihood(kind: str) -> str:
    """Bernoulli for a VAE (the benchmark setting), squared error for an AE."""
    return "bernoulli" if kind == "vae" else "gaussian"


@dataclass(frozen=True)
class TrainConfig:
    """How to train: data, optimiser, length, seeds and logging.

    ``seed`` drives the model (init and sampling noise); ``data_seed`` drives the data
    order and the dynamic binarization, which all members of a sweep share.
    """

    dataset: str = option(
        "mnist",
        check=text,
        help="mnist, fashion_mnist or tfds:NAME (a prepared TFDS dataset)",
        hparam=True,
    )
    epochs: int = option(
        10, check=positive_int, help="passes over the data", resumable=True, hparam=True
    )
    batch_size: int = option(128, check=positive_int, help="batch size", hparam=True)
    lr: float = option(1e-3, check=positive_float, help="Adam learning rate", hparam=True)
    schedule: str = option(
        "constant",
        choices=SCHEDULES,
        flag="--lr-schedule",
        help="decay of every member's rate over the run's steps (cosine and linear end at "
        "0 at the run's last step, so --resume cannot add epochs to such a run)",
        hparam="lr_schedule",
    )
    seed: int = option(0, check=integer, help="model seed (init and sampling noise)")
    data_seed: int = option(
        0,
        check=integer,
        help="seed of the data order and binarization (shared by all members)",
        hparam=True,
    )
    binarize: bool = option(
        True,
        check=boolean,
        flag="--no-binarize",
        help="Bernoulli likelihood on grey pixels instead of dynamic binarization",
    )
    chunk: int = option(
        100,
        check=positive_int,
        help="steps per compiled call (progress bar granularity)",
        resumable=True,
    )
    eval_batch: int = option(
        1000,
        check=positive_int,
        cli=False,
        help="test examples per evaluation call",
        resumable=True,
    )
    eval_examples: int = option(
        0,
        check=non_negative_int,
        help="test examples of each end-of-epoch evaluation before the last (TensorBoard's "
        "test curves); the last epoch and the results use the whole test set; 0: all",
        resumable=True,
    )
    max_to_keep: int = option(
        3,
        check=positive_int,
        help="checkpoint steps kept on disk, the newest (one is saved at each epoch's end)",
        resumable=True,
    )
    keep: str = option(
        "all",
        choices=KEEP,
        help="what the checkpoints before the last epoch's hold: 'all' the optimizer state "
        "too (a killed run resumes exactly from the newest), 'params' the parameters only "
        "(a third of the bytes; the last epoch's checkpoint and one saved on a signal hold "
        "everything; a run killed before either cannot resume)",
        resumable=True,
    )
    train_size: int | None = option(
        None,
        check=optional(positive_int),
        help="train on the first N examples only (quick runs; default: all)",
    )

    def __post_init__(self):
        _validate(self)


# fields a resumed run may change (``option(resumable=True)``); ``changes`` skips them
RESUMABLE = frozenset(
    f.name
    for cls in (ModelConfig, TrainConfig)
    for f in dataclasses.fields(cls)
    if f.metadata["resumable"]
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
            default (members that leave the axis at its default keep the names, and
            the run folders, that they have in a sweep without the axis).
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
    Axis(
        "iw_k",
        "structure",
        "--iw-ks",
        positive_int,
        kinds=("vae",),
        help="samples of the training bound (VAE members): 1 is the ELBO, k > 1 the "
        "importance-weighted bound (IWAE); each k is a group of the one program",
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

    The funnel [784,] 512 256 128 64 32 12 6 3 2 cut at latents 2, 6 and 12 gives three
    VAEs of different depths: ``funnel_hidden(funnel, 6) == (512, 256, 128, 64, 32, 12)``.
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
    (str, bool or number per name): the fields marked ``hparam`` of its model and of the
    training config, and the member's seed. A model's own value (its ``lr``) wins over
    the training config's; widths are joined as ``512-256``."""
    out = {**_hparams(member.model), "seed": member.seed}
    for name, v in _hparams(tcfg).items():
        if out.get(name) is None:
            out[name] = v
    return out


def _hparams(cfg) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        if name := f.metadata["hparam"]:
            v = getattr(cfg, f.name)
            out[f.name if name is True else name] = (
                "-".join(map(str, v)) if isinstance(v, tuple) else v
            )
    return out


# --- resuming a run: the saved config compared field by field ------------------------------

# the config class of each part of a run's config (``to_dict`` of a Program's config):
# ``model``, ``sweep.members.3.model``: a ModelConfig; ``train``, ``sweep.train``: a TrainConfig
_PARTS = {"model": ModelConfig, "train": TrainConfig}


def _part(path: str):
    return _PARTS.get(path.rsplit(".", 1)[-1])


def changes(saved, new, path: str = "") -> list[tuple[str, object, object]]:
    """(field path, new value, saved value) of every field that differs between a run's
    saved config and a new one, except the fields a resumed run may change (``RESUMABLE``).

    Args:
        saved: the run's config as it was written (JSON: ``to_dict`` of its parts).
        new: the config to resume with, in the same form (a Program's ``config``:
            ``type``, ``model`` or ``sweep``, ``train``).
        path: where ``saved`` and ``new`` sit in the whole config (for the recursion).
    Returns:
        the changes in the order of ``new``'s fields, paths like ``train.lr`` or
        ``sweep.members.1.model.beta``. A field missing from ``saved`` (a run written
        before the field existed) had its class's default: a new value other than the
        default is a change.
    """
    if isinstance(new, dict) and isinstance(saved, dict):
        cls = _part(path)
        defaults = to_dict(cls()) if cls else {}
        out = []
        for k, v in new.items():
            here = f"{path}.{k}" if path else k
            if cls and k in RESUMABLE:
                continue
            if k in saved:
                out += changes(saved[k], v, here)
            elif k in defaults and v != defaults[k]:
                out.append((here, v, defaults[k]))
        return out
    if isinstance(new, list) and isinstance(saved, list) and len(new) == len(saved):
        return [
            c
            for i, (a, b) in enumerate(zip(saved, new, strict=True))
            for c in changes(a, b, f"{path}.{i}")
        ]
    return [] if new == saved else [(path, new, saved)]


def flags_of(path: str) -> tuple[str, ...]:
    """The command-line flags that set the config field at ``path``: ``train.lr`` is set by
    ``--lr``; a model field by its flag of ``python -m jaxae.train`` and, if it is a sweep
    axis, the sweep's flag (``sweep.members.3.model.beta``: ``--beta``, ``--betas``)."""
    parent, _, name = path.rpartition(".")
    cls = _part(parent)
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None) if cls else None
    if f is None:
        return ()
    flags = [flag_name(f)]
    if cls is ModelConfig:
        flags += [a.flag for a in AXES if a.name == name]
    return tuple(flag for flag in flags if flag)


def describe_change(path: str, new, saved) -> str:
    """One change of ``changes`` as a line that names the field and its flags:
    ``train.lr 0.01 differs from the run's 0.001 (--lr)``."""
    flags = " or ".join(flags_of(path))
    return f"{path} {new} differs from the run's {saved}" + (f" ({flags})" if flags else "")


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
