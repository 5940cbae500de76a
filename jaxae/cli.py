"""Argument parsing and error handling shared by the command-line entry points.

Nothing here imports JAX at module level, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: ... (see --help)`` and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def non_negative_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def non_negative_float(s: str) -> float:
    v = float(s)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def add_train_flags(p: argparse.ArgumentParser, *, epochs: int = 10) -> None:
    """Flags shared by every command that trains: data, optimiser, length, output."""
    g = p.add_argument_group("training")
    g.add_argument(
        "--dataset",
        default="mnist",
        help="mnist, fashion_mnist or tfds:NAME (a prepared TFDS dataset)",
    )
    g.add_argument("--epochs", type=positive_int, default=epochs, help="passes over the data")
    g.add_argument("--batch-size", type=positive_int, default=128)
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    g.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="seed of the data order and binarization (shared by all members)",
    )
    g.add_argument(
        "--no-binarize",
        action="store_true",
        help="Bernoulli likelihood on grey pixels instead of dynamic binarization",
    )
    g.add_argument(
        "--train-size",
        type=positive_int,
        default=None,
        help="train on the first N examples only (quick runs)",
    )
    g.add_argument(
        "--chunk",
        type=positive_int,
        default=100,
        help="steps per compiled call (progress bar granularity)",
    )
    o = p.add_argument_group("output")
    o.add_argument("--models-dir", default="models", help="checkpoint root (models/<run>)")
    o.add_argument("--runs-dir", default="runs", help="TensorBoard root (runs/<run>)")
    o.add_argument("--resume", action="store_true", help="continue the run from its checkpoint")
    o.add_argument("--overwrite", action="store_true", help="delete an existing run first")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")


def train_config(args, *, seed: int = 0):
    from jaxae.config import TrainConfig

    return TrainConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        data_seed=args.data_seed,
        binarize=not args.no_binarize,
        chunk=args.chunk,
        train_size=args.train_size,
    )


def run_kwargs(args) -> dict:
    return {
        "models_dir": args.models_dir,
        "runs_dir": args.runs_dir,
        "resume": args.resume,
        "overwrite": args.overwrite,
        "progress": not args.no_progress,
    }


def fail(msg: str, code: int = 1):
    print(f"error: {msg}", file=sys.stderr)
    return code


def guarded(main):
    """Run ``main()``; known user-facing errors become one line on stderr and an exit code."""
    from jaxae.config import ConfigError

    try:
        return main()
    except ConfigError as e:
        return fail(str(e), 2)
    except KeyboardInterrupt as e:
        from jaxae.runner import Interrupted

        if isinstance(e, Interrupted):
            print(f"interrupted: {e}", file=sys.stderr)
            return 128 + e.signum
        return fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - map our own error types, re-raise the rest
        from jaxae.checkpoint import CheckpointError
        from jaxae.data import DataError
        from jaxae.runner import RunError
        from jaxae.train import NonFiniteError

        if isinstance(e, DataError | CheckpointError | RunError | NonFiniteError | OSError):
            return fail(str(e), 1)
        raise


def train_main(argv=None) -> int:
    """``python -m jaxae.train``: train one AE or VAE."""
    p = Parser(
        prog="python -m jaxae.train",
        description="Train one autoencoder or VAE on MNIST-like data. Checkpoints go to "
        "models/<run>/, TensorBoard summaries to runs/<run>/; the test metrics and the "
        "throughput are printed at the end.",
    )
    m = p.add_argument_group("model")
    m.add_argument("--kind", choices=["vae", "ae"], default="vae")
    m.add_argument(
        "--hidden",
        type=positive_int,
        nargs="+",
        default=[512, 256],
        help="encoder hidden widths; the decoder mirrors them",
    )
    m.add_argument("--latent", type=positive_int, default=20, help="latent size")
    m.add_argument(
        "--likelihood",
        choices=["bernoulli", "gaussian"],
        default=None,
        help="default: bernoulli for a VAE, gaussian (squared error) for an AE",
    )
    m.add_argument("--beta", type=non_negative_float, default=1.0, help="weight of the KL term")
    m.add_argument("--seed", type=int, default=0, help="model seed (init and sampling noise)")
    p.add_argument("--run", default=None, help="run name (default: derived from the model)")
    add_train_flags(p)
    args = p.parse_args(argv)

    def main():
        from jaxae.config import ModelConfig
        from jaxae.train import fit

        lik = args.likelihood or ("bernoulli" if args.kind == "vae" else "gaussian")
        cfg = ModelConfig(
            kind=args.kind,
            hidden=tuple(args.hidden),
            latent=args.latent,
            likelihood=lik,
            beta=args.beta,
        )
        tcfg = train_config(args, seed=args.seed)
        run = args.run or f"{cfg.name}-seed{args.seed}"
        res = fit(cfg, tcfg, run, **run_kwargs(args))
        print(format_result(res))
        return 0

    return guarded(main)


def format_result(res: dict) -> str:
    t, lines = res["timing"], []
    for i, name in enumerate(res["members"]):
        vals = "  ".join(
            f"{k}={v[i]:.4f}" if k == "mse" else f"{k}={v[i]:.2f}" for k, v in res["test"].items()
        )
        lines.append(f"test  {name}: {vals}")
    if t["steps"]:
        lines.append(
            f"steps {res['steps']}  compile {t['compile_s']:.1f} s  train {t['train_s']:.1f} s"
            f"  {t['examples_per_s']:.0f} examples/s"
            f" ({t['member_examples_per_s']:.0f} member-examples/s)"
        )
    else:
        lines.append(f"steps {res['steps']}: already trained, nothing to run")
    lines.append(f"checkpoint {res['checkpoint']}  logs {res['logs']}")
    return "\n".join(lines)
