"""``python -m jaxae.train``: train one autoencoder or VAE."""

from __future__ import annotations

from jaxae import config
from jaxae.cli import (
    Parser,
    add_config_flags,
    add_train_flags,
    format_result,
    from_flags,
    guarded,
    run_kwargs,
    start_hosts,
    train_config,
)

# the model's flags, in the order of --help
MODEL_FLAGS = ("kind", "arch", "hidden", "latent", "likelihood", "beta", "warmup", "iw_k")


def parser() -> Parser:
    p = Parser(
        prog="python -m jaxae.train",
        description="Train one autoencoder or VAE on MNIST-like data. Checkpoints go to "
        "models/<run>/, TensorBoard summaries to runs/<run>/; the test metrics and the "
        "throughput are printed at the end.",
    )
    m = p.add_argument_group("model")
    # no --likelihood: the kind's own (config.default_likelihood)
    add_config_flags(m, config.ModelConfig, MODEL_FLAGS, defaults={"likelihood": None})
    add_config_flags(m, config.TrainConfig, ("seed",))
    p.add_argument("--run", default=None, help="run name (default: derived from the model)")
    add_train_flags(p)
    p.run_name = run_name
    return p


def model_config(args) -> config.ModelConfig:
    """The model of the parsed flags."""
    likelihood = args.likelihood or config.default_likelihood(args.kind)
    return from_flags(config.ModelConfig, args, likelihood=likelihood)


def run_name(args) -> str:
    """``--run``, or a name derived from the model and its seed."""
    return args.run or f"{model_config(args).name}-seed{args.seed}"


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def run_main():
        start_hosts(args)
        from jaxae.runner import fit

        res = fit(model_config(args), train_config(args), run_name(args), **run_kwargs(args))
        print(format_result(res))
        return 0

    return guarded(run_main)
