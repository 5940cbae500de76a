"""``python -m jaxae.classifier``: the command (``jaxae.cli.classifier``); the classifier and
the sample-quality scores are in ``jaxae.quality``."""

from jaxae.cli.classifier import main

if __name__ == "__main__":
    raise SystemExit(main())
