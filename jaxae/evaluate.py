"""``python -m jaxae.evaluate``: the command (``jaxae.cli.evaluate``); the metrics are in
``jaxae.metrics``."""

from jaxae.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
