"""Question 2: how does beta trade reconstruction against KL and sample sharpness?

python -m experiments.beta_sweep                        # betas 0.25..8, latent 16, 3 seeds

The command is ``jaxae.cli.sweep.beta_main`` (also installed as ``jaxae-beta-sweep``).
"""

from jaxae.cli.sweep import beta_main as main

if __name__ == "__main__":
    raise SystemExit(main())
