"""``python -m jaxae.train``: the command (``jaxae.cli.train``); the training step is in
``jaxae.step`` and the loop in ``jaxae.runner``."""

from jaxae.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
