"""``python -m jaxae.sample``: decode latent samples of a trained model into a PNG."""

from __future__ import annotations

from pathlib import Path

from jaxae.cli import Parser, fail, guarded, positive_int
from jaxae.config import SAMPLE_MODES


def parser() -> Parser:
    p = Parser(
        prog="python -m jaxae.sample",
        description="Decode latent samples of a trained model into a PNG. For a sweep, "
        "--member picks one member (index or name, e.g. 'vae,latent=8,beta=1,seed=0'); "
        "without it every member is drawn side by side.",
    )
    p.add_argument("--ckpt", required=True, help="run folder under models/ or a step in it")
    p.add_argument(
        "--mode",
        choices=SAMPLE_MODES,
        default="prior",
        help="prior: samples from N(0, I); recon: test digits and reconstructions; "
        "interpolate: paths between two test digits; manifold: decodings over a "
        "latent grid; traverse: each latent dim swept over [-3, 3] from a test digit's "
        "posterior mean, one row per dim, the highest-KL (most active) dims first (at "
        "most n/9 rows); scatter: test latent means coloured by label",
    )
    p.add_argument("--member", default=None, help="sweep member: index or name (default: all)")
    p.add_argument("--n", type=positive_int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="seed of z and of the test digits")
    p.add_argument("--temperature", type=float, default=1.0, help="prior std (prior mode)")
    p.add_argument(
        "--density",
        choices=("auto", "normal", "gmm"),
        default="auto",
        help="prior mode: normal: z ~ N(0, I); gmm: a 10-component Gaussian mixture fitted "
        "on the training codes (makes an AE generative); auto: normal for a VAE, gmm for "
        "an AE",
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", default=None, help="PNG path (default: <ckpt>/<mode>.png)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return guarded(lambda: _main(args))


def _main(args) -> int:
    from jaxae import generate, plots
    from jaxae.restore import load

    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        return fail(f"output folder {out.parent} does not exist")
    run = load(args.ckpt, args.step, params_only=True)
    picked = range(len(run.members))
    if args.member is not None or len(run.members) == 1:
        picked = [run.member_index(args.member)]
    try:
        panels = [_panel(args, run, i) for i in picked]
    except generate.ModeError as e:
        return fail(str(e))
    names = [run.members[i].name for i in picked]
    if out is None:
        suffix = f"-{args.member}" if args.member is not None else ""
        out = Path(run.path) / f"{args.mode}{suffix.replace(',', '_')}.png"
    if args.mode == "scatter":
        points = [p for p, _, _ in panels]
        _, labels, (xlabel, ylabel) = panels[0]
        plots.scatter(names, points, labels, out, xlabel=xlabel, ylabel=ylabel)
    elif len(panels) == 1:
        plots.save_png(out, panels[0])
    else:
        plots.sheet(names, panels, out, title=f"{args.mode}, step {run.step}")
    print(out)
    return 0


def _panel(args, run, i):
    from jaxae import generate, plots

    if args.mode == "scatter":
        return generate.scatter_points(run, i)
    images, cols = generate.GRIDS[args.mode](
        run, i, n=args.n, seed=args.seed, temperature=args.temperature, density=args.density
    )
    return plots.tile(images, cols)
