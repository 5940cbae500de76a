"""A sweep from start to finish: train, evaluate the checkpoint, tabulate, draw.

``run_sweep`` is what ``experiments.latent_sweep`` and ``experiments.beta_sweep`` call.
Result rows, the aggregation over seeds and the tables' leading columns come from
``config.AXES``, so a new axis shows up in all of them without being named here.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import jax
import numpy as np

from jaxae import generate, hosts, likelihoods, plots, quality
from jaxae.config import AXES, ModelConfig, SweepConfig
from jaxae.metrics import evaluate_run, failure_reason, sample_quality
from jaxae.restore import load
from jaxae.runner import RunLog, Stopwatch, fit_sweep, load_images
from jaxae.summary import representatives

# metrics of ``jaxae.metrics.evaluate_run`` kept in the result rows, and those averaged
SCORES = tuple(f"{k}{d}" for d in ("", "_gmm") for k in ("confidence", "class_entropy", "frechet"))
AVERAGED = ("pca_mse", "active_units", "nll_iw", "sample_entropy", *SCORES)
EXTRA = (*AVERAGED, "neg_elbo_k", "k")
CONFIG_AXES = tuple(a.name for a in AXES if a.role != "seed")  # what seeds are averaged over


def member_rows(sweep: SweepConfig, result: dict, evals: list[dict]) -> list[dict]:
    """One row per member: its axes, final train and test metrics, ``evaluate_run`` extras."""
    rows = []
    for i, m in enumerate(sweep.members):
        row = {"member": m.name, **m.axes(), "likelihood": m.model.likelihood}
        row.update({f"train_{k}": v[i] for k, v in result["train"].items()})
        row.update({f"test_{k}": v[i] for k, v in result["test"].items()})
        if m.model.kind == "vae" and likelihoods.bounds_log_likelihood(
            m.model.likelihood, sweep.train.binarize
        ):  # the beta-free bound on log p(x), comparable across betas
            row["test_neg_elbo"] = row["test_recon"] + row["test_kl"]
        row.update({k: evals[i][k] for k in (*EXTRA, "failed") if k in evals[i]})
        row["active_units"] = row.pop("test_active_units")
        rows.append(row)
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of every metric, per configuration.

    A configuration is a member's values on every axis except the seed (``AXES``). A
    metric that some of its seeds lack (a failed score) is left out: the table shows ``-``.
    """
    buckets: dict[tuple, list[dict]] = {}
    for r in rows:
        buckets.setdefault(tuple(r[k] for k in CONFIG_AXES), []).append(r)
    out = []
    for key, rs in buckets.items():
        agg = {**dict(zip(CONFIG_AXES, key, strict=True)), "likelihood": rs[0]["likelihood"]}
        agg["seeds"] = len(rs)
        for k in dict.fromkeys(k for r in rs for k in r):
            if (k.startswith(("train_", "test_")) or k in AVERAGED) and all(k in r for r in rs):
                vals = np.array([r[k] for r in rs], np.float64)
                agg[k] = float(vals.mean())
                agg[f"{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(agg)
    return out


def write_tables(out_dir, rows: list[dict], summary: list[dict], extra: dict) -> None:
    """results.json (members, summary over seeds, timings) and results.csv (members)."""
    out_dir = Path(out_dir)
    doc = {**extra, "members": rows, "summary": summary}
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1))
    with open(out_dir / "results.csv", "w", newline="") as f:
        keys = dict.fromkeys(k for r in rows for k in r)  # an AE has more scores than a VAE
        w = csv.DictWriter(f, fieldnames=list(keys), restval="")
        w.writeheader()
        for r in rows:  # a failed phase as "phase: reason" in one cell
            failed = r.get("failed")
            w.writerow(
                {**r, "failed": "; ".join(f"{k}: {v}" for k, v in failed.items())} if failed else r
            )


COLUMNS = {  # results key -> (header, decimals)
    "test_loss": ("test loss", 2),
    "test_neg_elbo": ("-ELBO=rec+KL", 2),
    "test_recon": ("recon", 2),
    "test_kl": ("KL", 2),
    "test_mse": ("MSE/pixel", 4),
    "pca_mse": ("PCA MSE", 4),
    "active_units": ("active", 1),
    "sample_entropy": ("blur", 3),
    "confidence": ("conf", 3),
    "class_entropy": ("classes H", 2),
    "frechet": ("FD", 1),
    "frechet_gmm": ("FD GMM", 1),
    "nll_iw": ("IW NLL", 2),
}
LATENT_COLUMNS = (
    "test_loss",
    "test_recon",
    "test_kl",
    "test_mse",
    "pca_mse",
    "active_units",
    "confidence",
    "frechet",
    "frechet_gmm",
    "nll_iw",  # with --eval-k
)


def sheet_members(members) -> list[int]:
    """The members the samples sheet shows: all of them up to 48 panels, else the first
    seed of each configuration (``summary.representatives``)."""
    return representatives([m.axes() for m in members])


def format_table(summary: list[dict], columns=LATENT_COLUMNS) -> str:
    """The mean ± std over seeds of the chosen columns, one row per configuration."""
    # axes that only hold their default (an all-MLP sweep's arch, no warm-up) stay out
    shown = [
        a
        for a in CONFIG_AXES
        if not AXES_BY_NAME[a].hide_default
        or any(r[a] != getattr(ModelConfig(), a) for r in summary)
    ]
    cells = []
    for r in summary:
        row = [AXES_BY_NAME[a].label(r[a]) for a in shown]
        for k in columns:
            if not any(k in r for r in summary):
                continue
            p = COLUMNS[k][1]
            row.append("-" if k not in r else f"{r[k]:.{p}f}±{r[k + '_std']:.{p}f}")
        cells.append(row)
    head = [*shown, *(COLUMNS[k][0] for k in columns if any(k in r for r in summary))]
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
    lines = ["mean ± std over seeds"]
    notes = {
        "sample_entropy": "blur: mean binary entropy of decoded prior samples (nats/pixel)",
        "confidence": "conf: classifier confidence on samples decoded from z ~ N(0, I)",
        "class_entropy": "classes H: entropy of their predicted classes (log 10 = 2.30)",
        "frechet": "FD: Fréchet distance of their classifier features to the test set's",
        "frechet_gmm": "FD GMM: the same for z from a mixture fitted on an AE's codes",
    }
    lines += [f"  {notes[k]}" for k in columns if k in notes and any(k in r for r in summary)]
    for row in (head, *cells):
        lines.append("  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


AXES_BY_NAME = {a.name: a for a in AXES}


def traversals(run, path, rows: int = 6) -> None:
    """One panel per VAE member of seed 0: its ``rows`` highest-KL latent dims, each swept
    over [-3, 3] from one test digit (``jaxae.generate.traverse``)."""
    picked = [i for i, m in enumerate(run.members) if m.model.kind == "vae" and m.seed == 0]
    if not picked:
        return
    panels = []
    for i in picked:
        images, cols = generate.traverse(run, i, n=9 * rows, seed=0)
        panels.append(plots.tile(images, cols))
    plots.sheet(
        [run.members[i].name for i in picked],
        panels,
        path,
        title="latent traversals: rows are latent dims, highest KL first; columns z_d = -3..3",
    )


def run_sweep(
    sweep: SweepConfig,
    name: str,
    *,
    figures=("latent",),
    eval_k: int = 0,
    quality_samples: int = 0,
    classifier=None,
    log=None,
    **kwargs,
):
    """Train a sweep, evaluate the saved checkpoint with ``jaxae.metrics.evaluate_run``,
    score ``quality_samples`` decoded samples per member with the digit classifier
    (``jaxae.quality.resolve``; ``classifier``: its file or folder, by default the one that
    ships with jaxae for the dataset, else one beside the run, trained there when missing;
    results.json records it: ``TrainedClassifier.record``, with its sha256), then write
    results.json/csv and figures next to it.

    What was trained is never lost to a later phase: a score or figure that fails is
    recorded (the member's ``failed`` dict in its row, ``failures`` in results.json) with
    one warning line, and everything else is still written.

    Other keyword arguments go to ``jaxae.runner.run``. ``log``: where the progress lines
    go (default: ``logging.getLogger("jaxae")`` and the run's train.log).
    Returns:
        (result, rows, summary): the runner's result, per-member rows, mean/std over seeds.
    """
    sw = kwargs.setdefault("stopwatch", Stopwatch())
    result, prog = fit_sweep(sweep, name, **kwargs)
    with sw("figures"):  # the samples sheet's images, from the trained state
        test = hosts.replicate(load_images(sweep.train.dataset, "test")[:32])
        imgs = prog.gather(hosts.to_host(jax.jit(prog.images)(prog.state, prog.hyper, test)))
    del prog  # the trained state goes before the checkpoint is read back
    out = Path(result["checkpoint"])
    log = log or RunLog(out / "train.log")
    with sw("final eval"):
        log(
            f"final evaluation of {len(sweep.members)} members"
            + (f" (IW bound, k={eval_k})" if eval_k else "")
        )
        run = load(out, params_only=True)
        evals = evaluate_run(run, k=eval_k, progress=kwargs.get("progress"), test=result["test"])
    clf = None  # the classifier that scores the samples, on the primary process
    if quality_samples and hosts.is_primary():
        with sw("classifier"):  # shipped, or trained on the first run only
            clf = quality.resolve(classifier, out.parent, sweep.train.dataset, log=log)
        with sw("sample quality"):
            log(f"sample scores: {quality_samples} samples of each of {len(run.members)} members")
            scored = sample_quality(run, clf, n=quality_samples, progress=kwargs.get("progress"))
        for e, sc in zip(evals, scored, strict=True):
            failed = {**e.get("failed", {}), **sc.pop("failed", {})}
            e.update(sc)
            if failed:
                e["failed"] = failed
    rows = member_rows(sweep, result, evals)
    summary = aggregate(rows)
    failures = [
        {"member": r["member"], "phase": k, "reason": v}
        for r in rows
        for k, v in r.get("failed", {}).items()
    ]
    with sw("figures"):
        if hosts.is_primary():  # process 0 writes for every process
            log("figures")
            shown = sheet_members(sweep.members)
            draw = {
                "latent_sweep.png": lambda p: plots.latent_curves(summary, p),
                "beta_sweep.png": lambda p: plots.rate_distortion(summary, p),
                "traversals.png": lambda p: traversals(run, p),
                "samples.png": lambda p: plots.sheet(
                    [sweep.members[i].name for i in shown],
                    [plots.tile(imgs["samples"][i][:16]) for i in shown],
                    p,
                    title="decoded prior samples, one panel per "
                    + ("member" if len(shown) == len(sweep.members) else "configuration"),
                ),
            }
            wanted = ["latent_sweep.png"] if "latent" in figures else []
            wanted += ["beta_sweep.png", "traversals.png"] if "beta" in figures else []
            for fname in [*wanted, "samples.png"]:
                try:
                    draw[fname](out / fname)
                except Exception as e:  # noqa: BLE001 - one figure, recorded
                    reason = failure_reason(e)
                    failures.append({"member": None, "phase": f"figure {fname}", "reason": reason})
                    logging.getLogger("jaxae").warning(f"figure {fname} failed: {reason}")
    result["failures"] = failures
    if not hosts.is_primary():
        return result, rows, summary
    result["timing"]["phases"] = dict(sw.seconds)
    extra = {
        "timing": result["timing"],
        "steps": result["steps"],
        "dataset": sweep.train.dataset,
        "dropped": result["dropped"],
        "failures": failures,
    }
    if clf is not None:  # the classifier that scored the samples: its sha256 and origin
        extra["classifier"] = clf.record()
    write_tables(out, rows, summary, extra)
    log(f"wrote results.json, results.csv and figures to {out}")
    return result, rows, summary
