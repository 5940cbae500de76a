"""What the runner trains: every model as a member of a sweep, stacked under ``jax.vmap``.

One model is a sweep of one member: there is one ``Program``, one loop and one
checkpoint layout. Members with the same structure (``config.structure``: every model
field except the padded and hyperparameter axes) form a group. Within a group every
member is padded to the group's largest latent size D and carries a 0/1 mask; it is
initialised at its true size k and zero-padded, so it trains exactly like a standalone
latent-k model (masked weights get zero gradients, and Adam leaves them at zero). All
groups advance inside the same scanned step on the same batches.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import hosts
from jaxae.config import (
    HYPER,
    PADDED,
    Member,
    ModelConfig,
    SweepConfig,
    TrainConfig,
    hparams,
    structure,
    sweep_from_dict,
    to_dict,
)
from jaxae.evaluation import make_evaluate, model_images, test_arrays
from jaxae.keys import model_keys
from jaxae.models import Model, init_params
from jaxae.step import all_finite, init_state, make_optimizer, model_step


@dataclasses.dataclass(frozen=True)
class Program:
    """What ``jaxae.runner.run`` trains: the members' stacked state, one group per
    structure, seen through pure functions.

    ``step``, ``evaluate``, ``images`` and ``finite`` return one output per group, padding
    rows included; ``gather`` puts the real members' rows in sweep order on the host.
    ``init()`` computes a fresh initial state (the runner's: it donates it to the train
    step); ``state`` is one computed on first use and kept, for callers that want to look.
    """

    names: list[str]
    # () -> one stacked state per group (padded to a multiple of the devices), sharded
    init: Callable
    hyper: tuple  # one stacked dict of per-member arrays per group (``model_hyper``)
    step: Callable  # step(state, h, x, s, bkey) -> (state, metrics)
    evaluate: Callable  # evaluate(state, h, test_uint8) -> {name: (M,)} per group
    images: Callable  # images(state, h, x_test_uint8) -> {name: (M, n, H, W, C)} per group
    finite: Callable  # finite(state) -> (M,) bools per group: every parameter finite
    gather: Callable  # gather(outputs on the host, axis) -> the real members, sweep order
    to_saved: Callable  # the state as checkpoints hold it: real members only
    from_saved: Callable  # and back, padded and sharded over the devices
    config: dict  # {"type": "sweep", "sweep": SweepConfig as a dict}
    # one {name: value} per member for TensorBoard's HParams dashboard (config.hparams)
    hparams: list

    @functools.cached_property
    def state(self) -> tuple:
        """An initial state computed on first use and kept (``init()`` makes a new one)."""
        return self.init()

    def with_state(self, state: tuple) -> Program:
        """This Program with ``state`` (e.g. a trained one) as its ``state``."""
        new = dataclasses.replace(self)
        new.__dict__["state"] = state  # where ``functools.cached_property`` keeps it
        return new


@dataclasses.dataclass(frozen=True)
class Group:
    """Members sharing one structure; ``cfg`` is the padded model (latent = D)."""

    cfg: ModelConfig
    index: tuple[int, ...]  # positions of the members in the sweep


def group_members(members) -> list[Group]:
    """Group members by ``structure`` of their config, in first-seen order.

    The group's config is the first member's with every padded axis (the latent size) at
    the group's largest value; its hyperparameter fields are not read by traced code
    (each member's come in through ``model_hyper``).
    """
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault(structure(m.model), []).append(i)
    out = []
    for idx in groups.values():
        padded = {f: max(getattr(members[i].model, f) for i in idx) for f in PADDED}
        out.append(Group(dataclasses.replace(members[idx[0]].model, **padded), tuple(idx)))
    return out


def unstack(tree, i: int):
    """Member i of a stacked pytree."""
    return jax.tree.map(lambda a: a[i], tree)


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


def model_hyper(
    cfg: ModelConfig, seed: int, latent: int | None = None, tcfg: TrainConfig | None = None
) -> dict:
    """Per-model arrays the traced functions read: the hyperparameter axes (``HYPER``,
    e.g. beta), the latent mask (for a model padded to ``latent`` dims) and the train, eval
    and sample keys of the model's seed: ``group_hyper`` of a group of one."""
    one = group_hyper((Member(cfg, seed),), (0,), cfg.latent if latent is None else latent, tcfg)
    return unstack(one, 0)


def _hyper_value(cfg: ModelConfig, name: str, tcfg: TrainConfig | None):
    """A hyperparameter's value; a model's ``lr`` of None is the training config's."""
    v = getattr(cfg, name)
    if v is None and name == "lr":
        return (tcfg or TrainConfig()).lr
    return v


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """How a group's stacked initial state is computed: ``empty()`` allocates it (zeros:
    Adam's moments, its count and the step start there), then each latent size's members
    get their own initial parameters in their rows."""

    empty: Callable  # () -> the group's state, zeros
    parts: list  # (model config, positions (n,) among the rows, seeds (n,)) per latent size


def init_plan(members, rows, group_cfg: ModelConfig, tx) -> InitPlan:
    """The ``InitPlan`` of a group's ``rows`` (positions in ``members``).

    Each member is initialised at its true latent size from its seed's init key and
    zero-padded to the group's (padding Adam's zero moments is ``tx.init``): bit for bit
    the state of a standalone model.
    """
    sizes: dict[tuple, list[int]] = {}  # padded fields -> positions among the rows
    for pos, i in enumerate(rows):
        sizes.setdefault(tuple(getattr(members[i].model, f) for f in PADDED), []).append(pos)
    big = jax.eval_shape(lambda: init_state(group_cfg, tx, jax.random.key(0)))
    parts = [
        (
            members[rows[pos[0]]].model,
            np.asarray(pos),
            np.asarray([members[rows[p]].seed for p in pos]),
        )
        for pos in sizes.values()
    ]

    def empty():
        return jax.tree.map(lambda b: jnp.zeros((len(rows), *b.shape), b.dtype), big)

    return InitPlan(jax.jit(empty), parts)


def _pad_rows_on_host(a, shape):
    """Rows of ``a`` (n, ...) zero-padded at the end of each axis to ``(n, *shape)`` on the
    host; ``a`` itself where nothing is padded (the hidden layers: no copy)."""
    if tuple(a.shape[1:]) == tuple(shape):
        return a
    a = np.asarray(a)
    return np.pad(a, [(0, 0)] + [(0, t - n) for n, t in zip(a.shape[1:], shape, strict=True)])


@functools.partial(jax.jit, donate_argnums=0)
def _write_rows(params, positions, rows):
    """``params`` with rows ``positions`` replaced by ``rows`` (updated in place)."""
    return jax.tree.map(lambda p, r: p.at[positions].set(r), params, rows)


def initial_states(plans: list[InitPlan]) -> tuple:
    """The groups' initial states, computed on the host CPU (``shard_members`` moves
    them; every platform starts from the same numbers).

    The members of one latent size are initialised by one eager ``vmap`` over their seeds.
    Eagerly, each initialiser compiles once per array shape, and the hidden layers' shapes
    are shared by every latent size and kind, where one jitted program per latent size
    compiled them all again (an initialiser's random draws are slow to compile). The
    latent sizes run in two threads (XLA compiles a program on one core). Their rows are
    zero-padded on the host where the group is wider (the latent layers) and written into
    the group's state in place, so the memory is the state's plus a few latent sizes'
    members.
    """
    device = host_device()
    with jax.default_device(device):
        states = [plan.empty() for plan in plans]
    shapes = [jax.tree.map(lambda a: a.shape[1:], st["params"]) for st in states]

    def rows(g: int, cfg: ModelConfig, seeds):
        with jax.default_device(device):  # a thread's own setting
            params = jax.vmap(lambda k: init_params(cfg, k))(seed_keys(seeds)["init"])
            return jax.tree.map(_pad_rows_on_host, params, shapes[g])

    work = [(g, cfg, pos, seeds) for g, p in enumerate(plans) for cfg, pos, seeds in p.parts]

    def write(g: int, positions, part) -> None:
        with jax.default_device(device):
            states[g]["params"] = _write_rows(states[g]["params"], positions, part.result())

    # at most three latent sizes' rows in flight: a finished future holds its rows until
    # it is dropped, so the memory stays the state's plus a few latent sizes' members
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for g, cfg, positions, seeds in work:
            pending.append((g, positions, pool.submit(rows, g, cfg, seeds)))
            if len(pending) > 2:
                write(*pending.popleft())
        while pending:
            write(*pending.popleft())
    return tuple(states)


def padded_size(m: int, n: int | None = None) -> int:
    """``m`` members rounded up to a multiple of ``n`` devices (default: all devices)."""
    n = jax.device_count() if n is None else n
    return -(-m // n) * n


def shard_members(tree):
    """Shard the leading member axis of every leaf over all devices.

    Raises:
        ValueError: a leaf's member axis does not divide by the device count (pad the
            group first, ``padded_size``); nothing is ever silently replicated.
    """
    n = jax.device_count()
    if n == 1:
        return tree
    members = jax.sharding.NamedSharding(hosts.mesh(), jax.sharding.PartitionSpec("members"))

    def put(a):
        if not a.ndim or a.shape[0] % n:
            raise ValueError(f"member axis of shape {a.shape} does not divide by {n} devices")
        return hosts.put(a, members)

    return jax.tree.map(put, tree)


def replicated(tree):
    """Abstract ``tree`` (ShapeDtypeStructs) replicated on every device: a restore target."""
    sharding = jax.sharding.NamedSharding(hosts.mesh(), jax.sharding.PartitionSpec())
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def pad_rows(tree, size: int):
    """Repeat row 0 of every leaf at the end of its leading axis up to ``size`` rows."""

    def pad(a):
        extra = size - a.shape[0]
        return a if extra == 0 else jnp.concatenate([a, jnp.repeat(a[:1], extra, axis=0)])

    return jax.tree.map(pad, tree)


def per_device(f, sharded: tuple[bool, ...]):
    """``f``, vmapped over the member axis, run by each device on its own members.

    Members are independent, so the program needs no communication between devices.
    Left to the SPMD partitioner, a vmapped convolution over the sharded member axis
    becomes a grouped convolution that all-gathers its activations, and XLA:CPU may run
    the collectives of independent groups in a different order on each device: a
    deadlock in one process, a gloo abort across processes. ``sharded``: which
    arguments carry the member axis (the others are replicated); every output does.
    """
    if jax.device_count() == 1:
        return f
    spec = jax.sharding.PartitionSpec
    return jax.shard_map(
        f,
        mesh=hosts.mesh(),
        in_specs=tuple(spec("members") if on else spec() for on in sharded),
        out_specs=spec("members"),
        check_vma=False,
    )


_vmapped_keys = jax.jit(jax.vmap(model_keys))


def seed_keys(seeds) -> dict:
    """``model_keys`` of every seed, stacked (on the host CPU): one compiled call over the
    distinct seeds, which every group and latent size of a sweep share."""
    distinct, where = np.unique(np.asarray(seeds), return_inverse=True)
    with jax.default_device(host_device()):
        return jax.tree.map(lambda k: k[where], _vmapped_keys(distinct))


def group_hyper(members, rows, latent: int, tcfg: TrainConfig | None) -> dict:
    """The per-member arrays of ``members[i]`` for i in ``rows``, stacked, for a group
    padded to ``latent`` dims: each member's hyperparameters (``HYPER``), its latent mask
    and its train, eval and sample keys (``model_keys`` of its seed: ``seed_keys``)."""
    ms = [members[i] for i in rows]
    sizes = np.asarray([m.model.latent for m in ms])
    keys = seed_keys([m.seed for m in ms])
    with jax.default_device(host_device()):
        return {
            **{
                name: jnp.asarray([_hyper_value(m.model, name, tcfg) for m in ms], jnp.float32)
                for name in HYPER
            },
            "mask": jnp.asarray(np.arange(latent)[None, :] < sizes[:, None], jnp.float32),
            "key": keys["train"],
            "eval_key": keys["eval"],
            "sample_key": keys["sample"],
        }


EVAL_MEMBERS = 8  # members of a group evaluated side by side (vmapped) at a time


def members_evaluate(model: Model, tcfg: TrainConfig) -> Callable:
    """``evaluate(params, h, test)``: the test metrics {name: (G,)} of G stacked members of
    one group on the uint8 test images (N, F), as the training loop reports them (each
    member's own eval key and beta; ``jaxae.evaluation.make_evaluate``).

    ``EVAL_MEMBERS`` members at a time (``lax.map`` over vmapped batches of members): the
    activations of a test batch are held for those members only, so the evaluation's
    memory does not grow with the size of the group."""
    one = make_evaluate(model)

    def evaluate(params, hyper, test):
        x, xt, w, n = test_arrays(test, tcfg, model.cfg.likelihood, tcfg.eval_batch)

        def member(args):
            p, h = args
            return one(p, h, x, xt, w, h["eval_key"], n=n)

        return jax.lax.map(member, (params, hyper), batch_size=EVAL_MEMBERS)

    return evaluate


def sweep_shapes(sweep: SweepConfig) -> tuple:
    """Shapes and dtypes of a sweep's saved state (one stacked state per group, real
    members only), without initialising anything."""
    tx = make_optimizer(sweep.train)
    out = []
    for g in group_members(sweep.members):
        one = jax.eval_shape(lambda g=g: init_state(g.cfg, tx, jax.random.key(0)))
        m = len(g.index)
        out.append(jax.tree.map(lambda s, m=m: jax.ShapeDtypeStruct((m, *s.shape), s.dtype), one))
    return tuple(out)


def sweep_program(sweep: SweepConfig):
    """The Program training every member of the sweep in one scanned step.

    Each group is padded to a multiple of the device count with inert copies of its
    first member (``padded_size``), so the member axis is always sharded over every
    device. The copies train like that member but never leave the program: metrics,
    evaluations and images hold the real members only, and checkpoints save the real
    members only (``to_saved``), so a run resumes on any number of devices.
    """
    tcfg, members = sweep.train, sweep.members
    tx = make_optimizer(tcfg)
    groups = group_members(members)
    models = [Model(g.cfg) for g in groups]
    sizes = [padded_size(len(g.index)) for g in groups]  # rows per group, padding included
    # the members behind each group's rows: the padding repeats the group's first member
    rows = [
        g.index + g.index[:1] * (size - len(g.index)) for g, size in zip(groups, sizes, strict=True)
    ]
    plans = [init_plan(members, r, g.cfg, tx) for g, r in zip(groups, rows, strict=True)]

    def init():
        return shard_members(initial_states(plans))

    hyper = tuple(
        group_hyper(members, r, g.cfg.latent, tcfg) for g, r in zip(groups, rows, strict=True)
    )
    # rows of the concatenated (padded, group-major) outputs that hold the real members,
    # in sweep order
    offsets = np.cumsum([0, *sizes[:-1]])
    real_rows = np.concatenate(
        [o + np.arange(len(g.index)) for o, g in zip(offsets, groups, strict=True)]
    )
    order = real_rows[np.argsort(np.concatenate([g.index for g in groups]))]

    def over_members(f, sharded):  # vmapped over the member axis, each device its own
        return per_device(jax.vmap(f, in_axes=tuple(0 if on else None for on in sharded)), sharded)

    step_args = (True, True, False, False, False)  # which arguments carry the member axis
    steps = [over_members(model_step(m, tx, binarize=tcfg.binarize), step_args) for m in models]
    evals = [per_device(members_evaluate(m, tcfg), (True, True, False)) for m in models]
    imgs = [over_members(model_images(m), (True, True, False)) for m in models]
    finite_one = over_members(all_finite, (True,))

    # Every output is a tuple of per-group outputs with the padding rows; ``gather``
    # puts the real members in sweep order on the host.
    def step(state, hyper, x, s, bkey):
        outs = [f(*args, x, s, bkey) for f, *args in zip(steps, state, hyper, strict=True)]
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

    def evaluate(state, hyper, test):
        return tuple(
            f(group["params"], h, test) for f, group, h in zip(evals, state, hyper, strict=True)
        )

    def images(state, hyper, x):
        return tuple(
            f(group["params"], h, x) for f, group, h in zip(imgs, state, hyper, strict=True)
        )

    def finite(state):
        return tuple(finite_one(group["params"]) for group in state)

    def gather(groups, axis: int = 0):
        return jax.tree.map(lambda *a: np.take(np.concatenate(a, axis), order, axis), *groups)

    real = [len(g.index) for g in groups]  # real members per group

    def to_saved(state):
        return tuple(
            group if n == size else jax.tree.map(lambda a, n=n: a[:n], group)
            for n, size, group in zip(real, sizes, state, strict=True)
        )

    def from_saved(state):
        return shard_members(
            tuple(pad_rows(group, size) for group, size in zip(state, sizes, strict=True))
        )

    return Program(
        names=[m.name for m in members],
        init=init,
        hyper=shard_members(hyper),
        step=step,
        evaluate=evaluate,
        images=images,
        finite=finite,
        gather=gather,
        to_saved=to_saved,
        from_saved=from_saved,
        config={"type": "sweep", "sweep": to_dict(sweep)},
        hparams=[hparams(m, tcfg) for m in members],
    )


def single_program(cfg: ModelConfig, tcfg: TrainConfig) -> Program:
    """The Program of one model: a sweep of one member, whose seed is ``tcfg.seed``."""
    return sweep_program(SweepConfig((Member(cfg, tcfg.seed),), tcfg))


# --- saved runs --------------------------------------------------------------------------


def sweep_dict(config: dict) -> dict:
    """The sweep (a ``SweepConfig`` dict) of a saved run's config.

    Runs of one model written by earlier versions of jaxae have ``"type": "model"`` (a
    ModelConfig and a TrainConfig, whose ``seed`` is the model's): a sweep of one member.
    """
    if config.get("type") == "model":
        train = config["train"]
        return {
            "members": [{"model": config["model"], "seed": train.get("seed", 0)}],
            "train": train,
        }
    return config["sweep"]


def restore_state(ckpts, config: dict, step: int | None = None) -> tuple:
    """The state saved at ``step`` (default: the latest) by ``ckpts`` (a
    ``checkpoint.Checkpointer``) as one stacked state per group, real members only,
    replicated on every device; ``config`` is that step's. A step saved with ``--keep
    params`` has no ``opt_state``.

    A run of the earlier one-model layout (an unstacked state) becomes one group of one
    member.
    """
    sweep = sweep_from_dict(sweep_dict(config))
    if config.get("type") == "model":
        cfg, tx = sweep.members[0].model, make_optimizer(sweep.train)
        one = jax.eval_shape(lambda: init_state(cfg, tx, jax.random.key(0)))
        state = ckpts.restore(replicated(one), step)
        return (jax.tree.map(lambda a: a[None], state),)
    shapes = sweep_shapes(sweep)
    if config.get("holds") == "params":  # saved with --keep params before the last epoch
        shapes = tuple({k: v for k, v in g.items() if k != "opt_state"} for g in shapes)
    return ckpts.restore(replicated(shapes), step)


@functools.lru_cache(maxsize=256)
def _param_shapes(cfg: ModelConfig):
    """Shapes of a model's params (traced once per config: scoring calls this per sample)."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def member_params(prog_state, sweep: SweepConfig, i: int):
    """Params of member i cut back to its true latent size (a standalone model's tree)."""
    groups = group_members(sweep.members)
    for g, group in zip(groups, prog_state, strict=True):
        if i in g.index:
            m = sweep.members[i]
            padded = unstack(group["params"], g.index.index(i))
            shapes = _param_shapes(m.model)
            return jax.tree.map(lambda a, s: a[tuple(slice(0, n) for n in s.shape)], padded, shapes)
    raise IndexError(f"no member {i}")
