"""``python -m jaxae.classifier``: the digit classifier behind the sample-quality scores."""

from __future__ import annotations

from jaxae.cli import Parser, add_progress_flag, guarded, positive_int


def parser() -> Parser:
    p = Parser(
        prog="python -m jaxae.classifier",
        description="Train (or load, when it is already there) the small convolutional "
        "classifier that scores generated digits: mean confidence, entropy of the "
        "predicted-class histogram and a Fréchet distance of its penultimate features "
        "(jaxae.evaluate and the sweeps call it; they train it first when it is missing). "
        "Prints its test accuracy.",
    )
    p.add_argument("--dataset", default="mnist", help="mnist or fashion_mnist")
    p.add_argument("--epochs", type=positive_int, default=8, help="passes over the data")
    p.add_argument(
        "--out",
        default=None,
        help="checkpoint folder (default: <models-dir>/classifier-<dataset>)",
    )
    p.add_argument(
        "--models-dir",
        default="models",
        help="checkpoint root (overridden by $JAXAE_CLASSIFIER_DIR when set)",
    )
    p.add_argument(
        "--train-size",
        type=positive_int,
        default=None,
        help="train on the first N examples only (quick runs; default: all)",
    )
    p.add_argument("--retrain", action="store_true", help="train again even when it exists")
    add_progress_flag(p)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def run_main():
        from jaxae import quality

        path = args.out or quality.default_path(args.models_dir, args.dataset)
        clf = quality.fit_classifier(
            path,
            args.dataset,
            epochs=args.epochs,
            retrain=args.retrain,
            progress=args.progress,
            train_size=args.train_size,
        )
        print(f"{clf.path}: test accuracy {100 * clf.accuracy:.2f} % on {clf.dataset}")
        for what, s in quality.calibration(clf).items():
            print(
                f"10,000 {'training digits' if what == 'digits' else 'noise images'} against "
                f"the test set: confidence {s['confidence']:.3f}, class entropy "
                f"{s['class_entropy']:.3f} (uniform: {quality.UNIFORM_ENTROPY:.3f}), "
                f"Fréchet distance {s['frechet']:.2f}"
            )
        return 0

    return guarded(run_main)
