"""Question 2: how does beta trade reconstruction against KL and sample sharpness?

python -m experiments.beta_sweep                        # betas 0.25..8, latent 16, 3 seeds
"""

from jaxae.cli.sweep import sweep_main, sweep_parser


def main(argv=None) -> int:
    parser = sweep_parser(
        "python -m experiments.beta_sweep",
        "Train beta-VAEs for several betas and seeds as one compiled program; write "
        "results.json/csv, beta_sweep.png (rate-distortion) and samples.png to models/<name>/.",
        kind=["vae"],
        latent=[16],
        beta=[0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
    )
    columns = (
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
    )
    return sweep_main(parser, "beta_sweep", figures=("beta",), argv=argv, columns=columns)


if __name__ == "__main__":
    raise SystemExit(main())
