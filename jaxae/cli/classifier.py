"""``python -m jaxae.classifier``: the digit classifier behind the sample-quality scores."""

from __future__ import annotations

from jaxae.cli import Parser, add_progress_flag, guarded, positive_int

# the datasets whose classifier ships with the package (jaxae.quality.SHIPPED; listed here
# so that --help answers without importing JAX)
SHIPPED = ("mnist", "fashion_mnist")


def parser() -> Parser:
    p = Parser(
        prog="python -m jaxae.classifier",
        description="Load (or train, where there is none) the small convolutional "
        "classifier that scores generated images: mean confidence, entropy of the "
        "predicted-class histogram and a Fréchet distance of its penultimate features "
        "(jaxae.evaluate and the sweeps call it). The MNIST and Fashion-MNIST classifiers "
        "ship with the package (jaxae/weights/classifier-<dataset>.npz, each checked "
        "against its recorded sha256 when loaded), so scores compare across installs; "
        "another dataset's is trained on first use into <models-dir>/classifier-<dataset>. "
        "Prints its test accuracy and the scores of training images and of noise. "
        "--retrain trains a classifier from scratch with fixed seeds (8 epochs from seed 0: "
        "the shipped ones) and prints the sha256 of the weights file it writes.",
    )
    p.add_argument(
        "--dataset",
        default="mnist",
        help="mnist or fashion_mnist (shipped), or another dataset jaxae.data loads "
        "(trained on first use)",
    )
    p.add_argument("--epochs", type=positive_int, default=8, help="passes over the data")
    p.add_argument(
        "--out",
        default=None,
        help="the classifier's .npz weights file or checkpoint folder (default: for "
        f"{' and '.join(SHIPPED)} the shipped file jaxae/weights/classifier-<dataset>.npz, "
        "else <models-dir>/classifier-<dataset>)",
    )
    p.add_argument(
        "--models-dir",
        default="models",
        help="root of the classifiers trained on first use (overridden by "
        "$JAXAE_CLASSIFIER_DIR when set)",
    )
    p.add_argument(
        "--train-size",
        type=positive_int,
        default=None,
        help="train on the first N examples only (quick runs; default: all)",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train from scratch (seed 0) even where a classifier exists, and write it to "
        "--out; without --out, for a dataset whose classifier ships, this rewrites the "
        "package's file (record the printed sha256 in jaxae.quality.SHIPPED)",
    )
    add_progress_flag(p)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def run_main():
        import time
        from pathlib import Path

        from jaxae import quality

        if args.out:
            path = args.out
        elif args.dataset in quality.SHIPPED:
            path = quality.shipped_path(args.dataset)
        else:
            path = quality.default_path(args.models_dir, args.dataset)
        start = time.perf_counter()
        if args.out is None and args.dataset in quality.SHIPPED and not args.retrain:
            clf = quality.load_shipped(args.dataset)
        else:
            clf = quality.fit_classifier(
                path,
                args.dataset,
                epochs=args.epochs,
                retrain=args.retrain,
                progress=args.progress,
                train_size=args.train_size,
            )
        print(f"{clf.path}: test accuracy {100 * clf.accuracy:.2f} % on {clf.dataset}")
        print(f"sha256 {clf.digest}")
        if args.retrain:
            print(f"trained in {time.perf_counter() - start:.0f} s")
            want = quality.SHIPPED.get(args.dataset)
            if want == clf.digest:
                print(f"the same weights as the shipped {args.dataset} classifier")
            elif want is not None and quality.shipped_path(args.dataset) == Path(path).resolve():
                print(
                    f"not the recorded digest {want}: record the new one in "
                    "jaxae.quality.SHIPPED, or the package refuses the file"
                )
        for what, s in quality.calibration(clf).items():
            print(
                f"10,000 {'training digits' if what == 'digits' else 'noise images'} against "
                f"the test set: confidence {s['confidence']:.3f}, class entropy "
                f"{s['class_entropy']:.3f} (uniform: {quality.UNIFORM_ENTROPY:.3f}), "
                f"Fréchet distance {s['frechet']:.2f}"
            )
        return 0

    return guarded(run_main)
