"""Matplotlib figures (Agg backend) and image grids."""

from __future__ import annotations

import math

import numpy as np


def tile(images, cols: int | None = None, pad: int = 1):
    """Tile (n, H, W, C) images in [0, 1] into one (H', W', C) grid with a 1-px border."""
    images = np.clip(np.asarray(images, np.float32), 0, 1)
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + q * (w + pad) : pad + q * (w + pad) + w,
        ] = im
    return grid


def save_png(path, grid) -> None:
    """Write an (H, W, C) grid in [0, 1] as a PNG (grey for C == 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = np.asarray(grid)
    plt.imsave(str(path), g[..., 0] if g.shape[-1] == 1 else g, cmap="gray", vmin=0, vmax=1)
