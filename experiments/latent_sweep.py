"""Question 1: how does the loss change with the latent size? Is too much compression bad?

python -m experiments.latent_sweep                      # VAE + AE, latents 2..64, 3 seeds
python -m experiments.latent_sweep --hidden 512 256 128 64 32 12 6 3 --latents 2 3 6 12
"""

from jaxae.cli.sweep import sweep_main, sweep_parser


def main(argv=None) -> int:
    parser = sweep_parser(
        "python -m experiments.latent_sweep",
        "Train VAEs and AEs of several latent sizes and seeds as one compiled program; "
        "write results.json/csv, latent_sweep.png and samples.png to models/<name>/.",
        kind=["vae", "ae"],
        latent=[2, 4, 8, 16, 32, 64],
        beta=[1.0],
    )
    return sweep_main(parser, "latent_sweep", figures=("latent",), argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
