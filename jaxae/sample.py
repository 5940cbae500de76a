"""``python -m jaxae.sample``: the command (``jaxae.cli.sample``); the image grids are in
``jaxae.generate``."""

from jaxae.cli.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
