"""Shared command line of the sweep experiments (no JAX import at module level)."""

from __future__ import annotations

from jaxae.cli import (
    Parser,
    add_train_flags,
    guarded,
    non_negative_float,
    non_negative_int,
    positive_int,
    run_kwargs,
    train_config,
)


def sweep_parser(prog: str, description: str, *, kinds, latents, betas, seeds=3, epochs=10):
    p = Parser(prog=prog, description=description)
    s = p.add_argument_group("sweep (every combination is one member)")
    s.add_argument("--kinds", nargs="+", choices=["vae", "ae"], default=kinds)
    s.add_argument("--latents", type=positive_int, nargs="+", default=latents, help="latent sizes")
    s.add_argument(
        "--betas",
        type=non_negative_float,
        nargs="+",
        default=betas,
        help="KL weights (VAE members; AE members ignore beta)",
    )
    s.add_argument("--seeds", type=positive_int, default=seeds, help="seeds 0..N-1 per config")
    s.add_argument(
        "--hidden",
        type=positive_int,
        nargs="+",
        default=[512, 256],
        help="hidden widths shared by all members (e.g. 512 256 128 64 32 12 6 3)",
    )
    s.add_argument("--vae-likelihood", choices=["bernoulli", "gaussian"], default="bernoulli")
    s.add_argument("--ae-likelihood", choices=["bernoulli", "gaussian"], default="gaussian")
    p.add_argument("--name", default=None, help="sweep name: models/<name>, runs/<name>")
    p.add_argument(
        "--eval-k",
        type=non_negative_int,
        default=0,
        help="importance samples for a test NLL of every Bernoulli VAE member after "
        "training (0: skip; costly, see python -m jaxae.evaluate)",
    )
    p.add_argument(
        "--drop-nonfinite",
        action="store_true",
        help="a member whose loss turns NaN/Inf is dropped; the others go on "
        "(default: stop the sweep, keeping the last good checkpoint)",
    )
    add_train_flags(p, epochs=epochs)
    return p


def build_sweep(args):
    from jaxae.config import Member, ModelConfig, SweepConfig

    members = []
    for kind in args.kinds:
        lik = args.vae_likelihood if kind == "vae" else args.ae_likelihood
        betas = args.betas if kind == "vae" else [1.0]
        for latent in args.latents:
            for beta in dict.fromkeys(betas):
                for seed in range(args.seeds):
                    cfg = ModelConfig(
                        kind=kind,
                        hidden=tuple(args.hidden),
                        latent=latent,
                        likelihood=lik,
                        beta=beta,
                    )
                    members.append(Member(cfg, seed))
    return SweepConfig(tuple(members), train_config(args))


def sweep_main(parser, default_name: str, figures, argv=None, columns=None) -> int:
    """Parse, build the sweep, run it, print the result and the summary table."""
    args = parser.parse_args(argv)

    def main():
        from jaxae.cli import format_result
        from jaxae.sweep import run_sweep

        sweep = build_sweep(args)
        names = [m.name for m in sweep.members]
        more = ", ..." if len(names) > 4 else ""
        print(f"{len(names)} members in one compiled program: {', '.join(names[:4])}{more}")
        result, _, summary = run_sweep(
            sweep,
            args.name or default_name,
            figures=figures,
            drop_nonfinite=args.drop_nonfinite,
            eval_k=args.eval_k,
            **run_kwargs(args),
        )
        print(format_result(result))
        print(format_summary(summary, columns or LATENT_COLUMNS))
        return 0

    return guarded(main)


COLUMNS = {  # results key -> (header, decimals)
    "test_loss": ("test loss", 2),
    "test_neg_elbo": ("-ELBO=rec+KL", 2),
    "test_recon": ("recon", 2),
    "test_kl": ("KL", 2),
    "test_mse": ("MSE/pixel", 4),
    "pca_mse": ("PCA MSE", 4),
    "active_units": ("active", 1),
    "sample_entropy": ("blur", 3),
}


LATENT_COLUMNS = ("test_loss", "test_recon", "test_kl", "test_mse", "pca_mse", "active_units")


def format_summary(summary, columns=LATENT_COLUMNS) -> str:
    """The mean ± std over seeds of the chosen columns, one row per configuration."""
    cells = [[f"{r['kind']}", f"{r['latent']}", f"{r['beta']:g}"] for r in summary]
    for r, row in zip(summary, cells, strict=True):
        for k in columns:
            p = COLUMNS[k][1]
            row.append("-" if k not in r else f"{r[k]:.{p}f}±{r[k + '_std']:.{p}f}")
    head = ["kind", "latent", "beta", *(COLUMNS[k][0] for k in columns)]
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
    lines = [
        "mean ± std over seeds (blur: mean binary entropy of decoded prior samples, nats/pixel)"
    ]
    for row in (head, *cells):
        lines.append("  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)))
    return "\n".join(lines)
