"""Command line of ``python -m jaxae.sample`` (JAX is imported only after parsing)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxae.cli import Parser, fail, guarded, positive_int

MODES = ("prior", "recon", "interpolate", "manifold", "scatter")


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m jaxae.sample",
        description="Decode latent samples of a trained model into a PNG. For a sweep, "
        "--member picks one member (index or name, e.g. 'vae,latent=8,beta=1,seed=0'); "
        "without it every member is drawn side by side.",
    )
    p.add_argument("--ckpt", required=True, help="run folder under models/ or a step in it")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="prior",
        help="prior: samples from N(0, I); recon: test digits and reconstructions; "
        "interpolate: paths between two test digits; manifold: decodings over a "
        "latent grid; scatter: test latent means coloured by label",
    )
    p.add_argument("--member", default=None, help="sweep member: index or name")
    p.add_argument("--n", type=positive_int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="seed of z and of the test digits")
    p.add_argument("--temperature", type=float, default=1.0, help="prior std (prior mode)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", default=None, help="PNG path (default: <ckpt>/<mode>.png)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return guarded(lambda: _main(args))


def _main(args) -> int:
    from jaxae import plots, sample
    from jaxae.config import train_from_dict
    from jaxae.data import load as load_data
    from jaxae.restore import load

    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        return fail(f"output folder {out.parent} does not exist")
    run = load(args.ckpt, args.step)
    picked = range(len(run.members))
    if args.member is not None or run.kind == "model":
        picked = [run.member_index(args.member)]
    tcfg = train_from_dict(
        run.config["train"] if run.kind == "model" else run.config["sweep"]["train"]
    )
    test_x, labels = load_data(tcfg.dataset, "test")
    try:
        panels = [_panel(args, run, i, test_x) for i in picked]
    except sample.ModeError as e:
        return fail(str(e))
    names = [run.members[i][0] for i in picked]
    if out is None:
        suffix = f"-{args.member}" if args.member is not None else ""
        out = Path(run.path) / f"{args.mode}{suffix.replace(',', '_')}.png"
    if args.mode == "scatter":
        (xl, yl) = panels[0][1]
        plots.scatter(
            names, [p[0] for p in panels], labels[: len(panels[0][0])], out, xlabel=xl, ylabel=yl
        )
    elif len(panels) == 1:
        plots.save_png(out, panels[0])
    else:
        plots.sheet(names, panels, out, title=f"{args.mode}, step {run.step}")
    print(out)
    return 0


def _panel(args, run, i, test_x):
    from jaxae import plots, sample

    cfg, params = run.members[i][1], run.params(i)
    if args.mode == "scatter":
        return sample.scatter_points(cfg, params, test_x=test_x)
    images, cols = sample.GRIDS[args.mode](
        cfg, params, n=args.n, seed=args.seed, temperature=args.temperature, test_x=test_x
    )
    return plots.tile(images, cols)


if __name__ == "__main__":
    sys.exit(main())
