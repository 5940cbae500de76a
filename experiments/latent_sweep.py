"""Question 1: how does the loss change with the latent size? Is too much compression bad?

python -m experiments.latent_sweep                      # VAE + AE, latents 2..64, 3 seeds
python -m experiments.latent_sweep --hidden 512 256 128 64 32 12 6 3 --latents 2 3 6 12

The command is ``jaxae.cli.sweep.latent_main`` (also installed as ``jaxae-latent-sweep``).
"""

from jaxae.cli.sweep import latent_main as main

if __name__ == "__main__":
    raise SystemExit(main())
