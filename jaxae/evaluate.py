"""Evaluation beyond the training loop's test metrics: PCA baseline and result tables."""

from __future__ import annotations

import numpy as np


def pca_mse(train_x, test_x, ks) -> dict[int, float]:
    """Test MSE per pixel of PCA with k components fitted on the training set.

    Args:
        train_x: (N, F) uint8 or float images (scaled to [0, 1] here when uint8).
        test_x: (M, F) images of the same kind.
        ks: numbers of components.
    Returns:
        {k: mean squared reconstruction error per pixel on test_x}.
    """

    def scale(a):
        a = np.asarray(a, np.float64)
        return a / 255.0 if a.max() > 1.0 else a

    x, t = scale(train_x), scale(test_x)
    mu = x.mean(0)
    xc, tc = x - mu, t - mu
    _, vecs = np.linalg.eigh(xc.T @ xc)
    vecs = vecs[:, ::-1]  # leading components first
    total = np.square(tc).sum()
    out = {}
    for k in ks:
        proj = tc @ vecs[:, :k]
        out[int(k)] = float((total - np.square(proj).sum()) / tc.size)
    return out
