"""``python -m jaxae.evaluate``: likelihood bounds and latent statistics of a checkpoint."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from jaxae.cli import (
    ANALYSIS_FAILED,
    Parser,
    add_progress_flag,
    add_quality_flags,
    guarded,
    non_negative_int,
    positive_int,
)


def parser() -> Parser:
    p = Parser(
        prog="python -m jaxae.evaluate",
        description="Evaluate every member of a checkpoint on the test set (vmapped): "
        "negative ELBO (1 and k samples), importance-weighted NLL with k samples (Burda et "
        "al. 2016), reconstruction MSE per pixel, active latent units (posterior-mean "
        "variance > 0.01) and the PCA baseline of the same size. Writes eval.json next to "
        "the checkpoint and prints a table. Bounds are in nats on the binarized test set. "
        "Sample quality: a digit classifier (python -m jaxae.classifier: for MNIST and "
        "Fashion-MNIST the one that ships with jaxae, unless --classifier names another; "
        "eval.json records its sha256) scores decoded samples: mean confidence, entropy of "
        "the predicted classes (log 10 = 2.30: all classes alike) and the Fréchet distance "
        "of its features to the test set's (FD: an MNIST analogue of FID, not comparable "
        "with Inception FIDs); "
        "z ~ N(0, I) for every member, and for an AE also z from a Gaussian mixture fitted "
        "on its training codes (FD GMM).",
    )
    p.add_argument("--ckpt", required=True, help="run folder under models/ or a step in it")
    p.add_argument(
        "--k",
        type=non_negative_int,
        default=5000,
        help="importance samples (0: skip the likelihood bounds)",
    )
    p.add_argument("--chunk", type=positive_int, default=250, help="samples per decoder call")
    p.add_argument("--batch", type=positive_int, default=100, help="test digits per call")
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    add_quality_flags(p)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    add_progress_flag(p)
    return p


def format_rows(rows: list[dict]) -> str:
    """One line per member: bounds, MSE, PCA MSE, active units and sample quality."""
    head = (
        f"{'member':34} {'-ELBO(1)':>9} {'-ELBO(k)':>9} {'NLL IW':>9} {'k':>6} "
        f"{'MSE/px':>8} {'PCA MSE':>8} {'active':>6}"
    )
    scored = any("frechet" in r for r in rows)
    if scored:
        head += f" {'conf':>6} {'classH':>6} {'FD':>7} {'FD GMM':>7}"
    lines = [head]
    for r in rows:

        def f(key, r=r):
            return f"{r[key]:9.2f}" if key in r else f"{'-':>9}"

        def g(key, width, p, r=r):
            return f"{r[key]:{width}.{p}f}" if key in r else "-".rjust(width)

        lines.append(
            f"{r['member']:34} {f('neg_elbo_1')} {f('neg_elbo_k')} {f('nll_iw')} "
            f"{r.get('k', '-'):>6} {g('mse', 8, 4)} {r['pca_mse']:8.4f} "
            f"{r['active_units']:6d}"
        )
        if scored:
            lines[-1] += (
                f" {g('confidence', 6, 3)} {g('class_entropy', 6, 3)} {g('frechet', 7, 2)}"
                f" {g('frechet_gmm', 7, 2)}"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def run_main():
        from jaxae.metrics import evaluate_run, resolve_classifier
        from jaxae.restore import load

        run = load(args.ckpt, args.step, params_only=True)
        t = time.perf_counter()
        clf = None
        if args.quality_samples:
            clf = resolve_classifier(run, args.classifier, progress=args.progress)
        rows = evaluate_run(
            run,
            k=args.k,
            chunk=args.chunk,
            batch=args.batch,
            seed=args.seed,
            progress=args.progress,
            quality_samples=args.quality_samples,
            classifier=clf,
        )
        secs = time.perf_counter() - t
        out = Path(run.path) / "eval.json"
        doc = {"step": run.step, "seconds": secs, "members": rows}
        if clf is not None:  # the classifier that scored the samples: its sha256 and origin
            doc["classifier"] = clf.record()
        out.write_text(json.dumps(doc, indent=1))
        print(format_rows(rows))
        print(f"evaluated in {secs:.1f} s; wrote {out}")
        failed = sum(len(r.get("failed", {})) for r in rows)
        if failed:
            print(f"{failed} analysis phase(s) failed (see 'failed' in {out})", file=sys.stderr)
            return ANALYSIS_FAILED
        return 0

    return guarded(run_main)
