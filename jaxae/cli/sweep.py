"""The command line of the sweep experiments: one flag per axis of ``config.AXES``.

The two experiments (``python -m experiments.latent_sweep`` / ``jaxae-latent-sweep`` and
``python -m experiments.beta_sweep`` / ``jaxae-beta-sweep``) are ``latent_main`` and
``beta_main``: their defaults, descriptions and table columns are here.
"""

from __future__ import annotations

import sys
import time

from jaxae import config
from jaxae.cli import (
    ANALYSIS_FAILED,
    STARTED,
    Parser,
    add_config_flags,
    add_quality_flags,
    add_train_flags,
    checked,
    format_result,
    guarded,
    non_negative_int,
    positive_int,
    run_kwargs,
    start_hosts,
    train_config,
)
from jaxae.likelihoods import LIKELIHOODS


def sweep_parser(prog: str, description: str, *, epochs: int | None = None, **axes) -> Parser:
    """A sweep command's parser; ``axes`` gives each axis's default values by axis name
    (``latent=[2, 4]``, ``seed=3``: a count), the rest default to ``ModelConfig``'s."""
    p = Parser(prog=prog, description=description)
    s = p.add_argument_group("sweep (every combination is one member)")
    for a in config.AXES:
        if a.name == "seed":
            s.add_argument(a.flag, type=positive_int, default=axes.get("seed", 3), help=a.help)
            continue
        s.add_argument(
            a.flag,
            dest=f"axis_{a.name}",  # "lr" is also --lr, the training flag
            type=checked(a.check),
            nargs="+",
            choices=a.choices,
            default=axes.get(a.name, [getattr(config.ModelConfig(), a.name)]),
            help=a.help,
        )
    hidden = (
        "hidden widths shared by all members (dense layers; after the convolutions for "
        "--archs conv)"
    )
    add_config_flags(s, config.ModelConfig, ["hidden"], helps={"hidden": hidden})
    s.add_argument(
        "--funnel",
        type=positive_int,
        nargs="+",
        default=None,
        help="one funnel encoder cut at each latent size instead of --hidden (hidden = the "
        "funnel's widths above the latent): e.g. --funnel 512 256 128 64 32 12 6 3 2 "
        "--latents 2 6 12 trains three VAEs, the 784-512-256-128-64-32-12-6-3-2 funnel cut at "
        "latents 2, 6 and 12; depths differ, so each latent is its own group",
    )
    for kind in config.KINDS:
        s.add_argument(
            f"--{kind}-likelihood",
            choices=tuple(LIKELIHOODS),
            default=config.default_likelihood(kind),
            help=f"likelihood of the {kind.upper()} members",
        )
    p.add_argument("--name", default=None, help="sweep name: models/<name>, runs/<name>")
    p.add_argument(
        "--eval-k",
        type=non_negative_int,
        default=0,
        help="importance samples for a test NLL of every VAE member whose likelihood is a "
        "density, after training (0: skip; costly, see python -m jaxae.evaluate)",
    )
    add_quality_flags(p)
    p.add_argument(
        "--drop-nonfinite",
        action="store_true",
        help="a member whose loss turns NaN/Inf is dropped; the others go on "
        "(otherwise the sweep stops, keeping the last good checkpoint)",
    )
    # 36 members x 10,000 test examples cost ~9 s an epoch on 2 CPU cores: the curves
    # between the first and the last epoch use the first 2,000
    add_train_flags(p, epochs=epochs, eval_examples=2000)
    return p


def build_sweep(args) -> config.SweepConfig:
    """The sweep the parsed flags describe: every combination of the axes' values."""
    base = config.ModelConfig(hidden=tuple(args.hidden))
    values = {a.name: getattr(args, f"axis_{a.name}") for a in config.AXES if a.name != "seed"}
    liks = {kind: getattr(args, f"{kind}_likelihood") for kind in config.KINDS}
    members = config.grid(base, values, args.seeds, liks, funnel=args.funnel)
    return config.SweepConfig(members, train_config(args))


def sweep_main(parser, default_name: str, figures, argv=None, columns=None) -> int:
    """Parse, build the sweep, run it, print the result and the summary table."""
    parser.run_name = lambda ns: ns.name or default_name
    args = parser.parse_args(argv)

    def main():
        start_hosts(args)
        from jaxae.pipeline import LATENT_COLUMNS, format_table, run_sweep
        from jaxae.runner import Stopwatch, format_phases

        sw = Stopwatch()
        sw.seconds["start-up"] = time.perf_counter() - STARTED  # imports, JAX's start
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
            quality_samples=args.quality_samples,
            classifier=args.classifier,
            stopwatch=sw,
            **run_kwargs(args),
        )
        print(format_result(result))
        print(format_table(summary, columns or LATENT_COLUMNS))
        print(format_phases(sw.seconds, wall=time.perf_counter() - STARTED))
        if result.get("failures"):
            print(
                f"{len(result['failures'])} analysis phase(s) failed (listed above and in "
                f"results.json); training, checkpoint and the other results are complete",
                file=sys.stderr,
            )
            return ANALYSIS_FAILED
        return 0

    return guarded(main)


# --- the two experiments -----------------------------------------------------------------


def latent_main(argv=None) -> int:
    """Question 1: how does the loss change with the latent size? Is too much compression
    bad? VAEs and AEs of latent sizes 2..64, 3 seeds each."""
    parser = sweep_parser(
        "python -m experiments.latent_sweep",
        "Train VAEs and AEs of several latent sizes and seeds as one compiled program; "
        "write results.json/csv, latent_sweep.png and samples.png to models/<name>/.",
        kind=["vae", "ae"],
        latent=[2, 4, 8, 16, 32, 64],
        beta=[1.0],
    )
    return sweep_main(parser, "latent_sweep", figures=("latent",), argv=argv)


# the beta sweep's table: the bound and its two terms, then blur and sample quality
BETA_COLUMNS = (
    "test_neg_elbo",
    "test_recon",
    "test_kl",
    "test_loss",
    "test_mse",
    "sample_entropy",
    "active_units",
    "confidence",
    "class_entropy",
    "frechet",
    "nll_iw",  # with --eval-k
)


def beta_main(argv=None) -> int:
    """Question 2: how does beta trade reconstruction against KL and sample sharpness?
    beta-VAEs of betas 0.25..8 at latent 16, 3 seeds each."""
    parser = sweep_parser(
        "python -m experiments.beta_sweep",
        "Train beta-VAEs for several betas and seeds as one compiled program; write "
        "results.json/csv, beta_sweep.png (rate-distortion) and samples.png to models/<name>/.",
        kind=["vae"],
        latent=[16],
        beta=[0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
    )
    return sweep_main(parser, "beta_sweep", figures=("beta",), argv=argv, columns=BETA_COLUMNS)
