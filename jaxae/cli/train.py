"""``python -m jaxae.train``: train one autoencoder or VAE."""

from __future__ import annotations

from jaxae import config
from jaxae.cli import (
    Parser,
    add_train_flags,
    default,
    format_result,
    guarded,
    non_negative_float,
    non_negative_int,
    positive_int,
    run_kwargs,
    start_hosts,
    train_config,
)
from jaxae.likelihoods import LIKELIHOODS


def parser() -> Parser:
    m_cfg = config.ModelConfig
    p = Parser(
        prog="python -m jaxae.train",
        description="Train one autoencoder or VAE on MNIST-like data. Checkpoints go to "
        "models/<run>/, TensorBoard summaries to runs/<run>/; the test metrics and the "
        "throughput are printed at the end.",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--kind", choices=config.KINDS, default=default(m_cfg, "kind"), help="model kind"
    )
    m.add_argument(
        "--arch",
        choices=tuple(config.ARCHS),
        default=default(m_cfg, "arch"),
        help="encoder/decoder: " + "; ".join(f"{k}: {v}" for k, v in config.ARCHS.items()),
    )
    m.add_argument(
        "--hidden",
        type=positive_int,
        nargs="*",
        default=list(default(m_cfg, "hidden")),
        help="encoder hidden widths (dense layers); the decoder mirrors them",
    )
    m.add_argument(
        "--latent", type=positive_int, default=default(m_cfg, "latent"), help="latent size"
    )
    m.add_argument(
        "--likelihood",
        choices=tuple(LIKELIHOODS),
        default=None,
        help="decoder likelihood (default: bernoulli for a VAE, gaussian, i.e. squared "
        "error, for an AE)",
    )
    m.add_argument(
        "--beta",
        type=non_negative_float,
        default=default(m_cfg, "beta"),
        help="weight of the KL term",
    )
    m.add_argument(
        "--warmup",
        type=non_negative_int,
        default=default(m_cfg, "warmup"),
        help="KL warm-up: beta rises linearly from 0 over this many steps (0: none)",
    )
    m.add_argument(
        "--seed",
        type=int,
        default=default(config.TrainConfig, "seed"),
        help="model seed (init and sampling noise)",
    )
    p.add_argument("--run", default=None, help="run name (default: derived from the model)")
    add_train_flags(p)
    p.run_name = run_name
    return p


def model_config(args) -> config.ModelConfig:
    return config.ModelConfig(
        kind=args.kind,
        arch=args.arch,
        hidden=tuple(args.hidden),
        latent=args.latent,
        likelihood=args.likelihood or config.default_likelihood(args.kind),
        beta=args.beta,
        warmup=args.warmup,
    )


def run_name(args) -> str:
    """``--run``, or a name derived from the model and its seed."""
    return args.run or f"{model_config(args).name}-seed{args.seed}"


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def run_main():
        start_hosts(args)
        from jaxae.runner import fit

        cfg = model_config(args)
        res = fit(cfg, train_config(args, seed=args.seed), run_name(args), **run_kwargs(args))
        print(format_result(res))
        return 0

    return guarded(run_main)
