"""Many models as one compiled program: stacked members under ``jax.vmap``.

Members with the same structure (kind, likelihood, widths) form a group. Within a group
every member is padded to the group's largest latent size D and carries a 0/1 mask; it is
initialised at its true size k and zero-padded, so it trains exactly like a standalone
latent-k model (masked weights get zero gradients, and Adam leaves them at zero). All
groups advance inside the same scanned step on the same batches.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.config import Member, ModelConfig, SweepConfig, to_dict
from jaxae.models import Model
from jaxae.train import (
    init_state,
    make_evaluate,
    make_optimizer,
    model_hyper,
    model_images,
    model_keys,
    model_step,
    test_arrays,
)


@dataclasses.dataclass(frozen=True)
class Group:
    """Members sharing one structure; ``cfg`` is the padded model (latent = D)."""

    cfg: ModelConfig
    index: tuple[int, ...]  # positions of the members in the sweep


def group_members(members) -> list[Group]:
    """Group members by (kind, likelihood, hidden, image shape), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        c = m.model
        groups.setdefault((c.kind, c.likelihood, c.hidden, c.image_shape), []).append(i)
    out = []
    for idx in groups.values():
        first = members[idx[0]].model
        latent = max(members[i].model.latent for i in idx)
        out.append(Group(dataclasses.replace(first, latent=latent, beta=1.0), tuple(idx)))
    return out


def pad_to(small, big):
    """Zero-pad every leaf of ``small`` at the end of each axis to the shape in ``big``.

    Done in numpy on the host: one eager ``jnp.pad`` per new shape would compile each time.
    """

    def pad(a, b):
        a = np.asarray(a)
        if a.shape == b.shape:
            return a
        return np.pad(a, [(0, t - s) for s, t in zip(a.shape, b.shape, strict=True)])

    return jax.tree.map(pad, small, big)


def stack(trees):
    """Stack a list of identical pytrees on a new leading member axis (on the host)."""

    def st(*xs):
        if jax.dtypes.issubdtype(xs[0].dtype, jax.dtypes.prng_key):
            return jnp.stack(xs)
        return jnp.asarray(np.stack([np.asarray(x) for x in xs]))

    return jax.tree.map(st, *trees)


def unstack(tree, i: int):
    """Member i of a stacked pytree."""
    return jax.tree.map(lambda a: a[i], tree)


def init_member(m: Member, group_cfg: ModelConfig, tx) -> dict:
    """Member state initialised at its true latent size, zero-padded to the group's."""
    key = model_keys(m.seed)["init"]
    small = init_state(m.model, tx, key)
    big = jax.eval_shape(lambda: init_state(group_cfg, tx, key))
    return pad_to(small, big)  # Adam's moments start at zero, so padding them is tx.init


def shard_members(tree):
    """Shard the leading member axis over all devices when it divides evenly."""
    devices = jax.devices()
    if len(devices) == 1:
        return tree
    mesh = jax.sharding.Mesh(np.array(devices), ("members",))
    spec = jax.sharding.PartitionSpec("members")
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def put(a):
        if a.ndim and a.shape[0] % len(devices) == 0:
            return jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))
        return jax.device_put(a, repl)

    return jax.tree.map(put, tree)


def sweep_state(sweep: SweepConfig) -> tuple:
    """Initial state of a sweep: one stacked state per group (unsharded)."""
    tx = make_optimizer(sweep.train)
    return tuple(
        stack([init_member(sweep.members[i], g.cfg, tx) for i in g.index])
        for g in group_members(sweep.members)
    )


def sweep_shapes(sweep: SweepConfig) -> tuple:
    """Shapes and dtypes of ``sweep_state(sweep)``, without initialising anything."""
    tx = make_optimizer(sweep.train)
    out = []
    for g in group_members(sweep.members):
        one = jax.eval_shape(lambda g=g: init_state(g.cfg, tx, jax.random.key(0)))
        m = len(g.index)
        out.append(jax.tree.map(lambda s, m=m: jax.ShapeDtypeStruct((m, *s.shape), s.dtype), one))
    return tuple(out)


def sweep_program(sweep: SweepConfig):
    """A runner Program training every member of the sweep in one scanned step."""
    from jaxae.runner import Program

    tcfg, members = sweep.train, sweep.members
    tx = make_optimizer(tcfg)
    groups = group_members(members)
    models = [Model(g.cfg) for g in groups]
    state = sweep_state(sweep)
    hyper = tuple(
        stack([model_hyper(members[i].model, members[i].seed, g.cfg.latent) for i in g.index])
        for g in groups
    )
    order = np.argsort(np.concatenate([g.index for g in groups]))  # group-major -> sweep order
    steps = [
        jax.vmap(model_step(m, tx, binarize=tcfg.binarize), in_axes=(0, 0, None, None, None))
        for m in models
    ]
    evals = [jax.vmap(make_evaluate(m), in_axes=(0, 0, None, None, None, None, 0)) for m in models]
    imgs = [jax.vmap(model_images(m), in_axes=(0, 0, None)) for m in models]

    def cat(dicts):
        return {k: jnp.concatenate([d[k] for d in dicts])[order] for k in dicts[0]}

    def step(state, h, x, s, bkey):
        outs = [f(st, hh, x, s, bkey) for f, st, hh in zip(steps, state, h, strict=True)]
        return tuple(o[0] for o in outs), cat([o[1] for o in outs])

    def evaluate(state, h, test):
        res = []
        for f, g, st, hh in zip(evals, groups, state, h, strict=True):
            x, xt, w, n = test_arrays(test, tcfg, g.cfg.likelihood, tcfg.eval_batch)
            res.append(f(st["params"], hh, x, xt, w, n, hh["eval_key"]))
        return cat(res)

    def images(state, h, x):
        return cat([f(st["params"], hh, x) for f, st, hh in zip(imgs, state, h, strict=True)])

    return Program(
        names=[m.name for m in members],
        state=shard_members(state),
        hyper=shard_members(hyper),
        step=step,
        evaluate=evaluate,
        images=images,
        config={"type": "sweep", "sweep": to_dict(sweep)},
    )


def member_params(prog_state, sweep: SweepConfig, i: int):
    """Params of member i cut back to its true latent size (a standalone model's tree)."""
    groups = group_members(sweep.members)
    for g, st in zip(groups, prog_state, strict=True):
        if i in g.index:
            m = sweep.members[i]
            padded = unstack(st["params"], g.index.index(i))
            shapes = jax.eval_shape(
                lambda m=m: init_state(m.model, make_optimizer(sweep.train), jax.random.key(0))[
                    "params"
                ]
            )
            return jax.tree.map(lambda a, s: a[tuple(slice(0, n) for n in s.shape)], padded, shapes)
    raise IndexError(f"no member {i}")


# --- running a sweep and tabulating it ------------------------------------------------


def member_rows(sweep: SweepConfig, result: dict, evals: list[dict]) -> list[dict]:
    """One row per member: config, final train and test metrics, ``jaxae.evaluate`` extras."""
    rows = []
    for i, m in enumerate(sweep.members):
        c = m.model
        row = {
            "member": m.name,
            "kind": c.kind,
            "likelihood": c.likelihood,
            "latent": c.latent,
            "beta": c.beta,
            "seed": m.seed,
        }
        row.update({f"train_{k}": v[i] for k, v in result["train"].items()})
        row.update({f"test_{k}": v[i] for k, v in result["test"].items()})
        if c.kind == "vae":  # the beta-free bound, comparable across betas
            row["test_neg_elbo"] = row["test_recon"] + row["test_kl"]
        extra = ("pca_mse", "active_units", "sample_entropy", "nll_iw", "neg_elbo_k", "k")
        row.update({k: evals[i][k] for k in extra if k in evals[i]})
        rows.append(row)
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of every metric, per (kind, latent, beta)."""
    keys = ("kind", "likelihood", "latent", "beta")
    buckets: dict[tuple, list[dict]] = {}
    for r in rows:
        buckets.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in buckets.items():
        agg = dict(zip(keys, key, strict=True))
        agg["seeds"] = len(rs)
        for k in rs[0]:
            if k.startswith(("train_", "test_")) or k in (
                "pca_mse",
                "active_units",
                "nll_iw",
                "sample_entropy",
            ):
                vals = np.array([r[k] for r in rs], np.float64)
                agg[k] = float(vals.mean())
                agg[f"{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(agg)
    return out


def write_tables(out_dir, rows: list[dict], summary: list[dict], extra: dict) -> None:
    """results.json (members, summary over seeds, timings) and results.csv (members)."""
    import csv
    import json
    from pathlib import Path

    out_dir = Path(out_dir)
    doc = {**extra, "members": rows, "summary": summary}
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1))
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def run_sweep(
    sweep: SweepConfig, name: str, *, figures=("latent",), eval_k: int = 0, log=print, **kwargs
):
    """Train a sweep, evaluate the saved checkpoint with ``jaxae.evaluate``, then write
    results.json/csv and figures next to it.

    Returns:
        (result, rows, summary): the runner's result, per-member rows, mean/std over seeds.
    """
    from pathlib import Path

    from jaxae import plots
    from jaxae.checkpoint import load
    from jaxae.evaluate import evaluate_run
    from jaxae.runner import load_images, run

    prog = sweep_program(sweep)
    result = run(prog, sweep.train, name, **kwargs)
    out = Path(result["checkpoint"])
    evals = evaluate_run(load(out), k=eval_k, progress=kwargs.get("progress", True))
    rows = member_rows(sweep, result, evals)
    summary = aggregate(rows)
    extra = {
        "timing": result["timing"],
        "steps": result["steps"],
        "dataset": sweep.train.dataset,
        "dropped": result["dropped"],
    }
    write_tables(out, rows, summary, extra)
    if "latent" in figures:
        plots.latent_curves(summary, out / "latent_sweep.png")
    if "beta" in figures:
        plots.rate_distortion(summary, out / "beta_sweep.png")
    test = jnp.asarray(load_images(sweep.train.dataset, "test")[:32])
    imgs = jax.device_get(jax.jit(prog.images)(prog.state, prog.hyper, test))
    plots.sheet(
        [m.name for m in sweep.members],
        [plots.tile(s[:16]) for s in np.asarray(imgs["samples"])],
        out / "samples.png",
        title="decoded prior samples, one panel per member",
    )
    log(f"wrote results.json, results.csv and figures to {out}")
    return result, rows, summary
