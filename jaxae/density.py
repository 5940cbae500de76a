"""A Gaussian mixture fitted ex post on latent codes: what makes an autoencoder generative.

An AE's codes do not follow N(0, I), so decoding prior samples gives noise. Fitting a
density on the training codes and sampling from it instead is the recipe of Ghosh et al.
(2020, "From variational to deterministic autoencoders", section 4); ``jaxae.sample --mode
prior --density gmm`` uses it. Plain numpy expectation-maximisation: the two matmuls over
all points of each iteration in float32 on centred data (a covariance that rounding
leaves indefinite is redone in float64), everything else in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GaussianMixture:
    """K full-covariance Gaussians: weights (K,), means (K, D), covariances (K, D, D)."""

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    def log_density(self, z) -> np.ndarray:
        """log p(z) of points z (N, D) under the mixture, (N,)."""
        return _logsumexp(self._log_joint(np.asarray(z, np.float64)), axis=1)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n points (n, D) drawn from the mixture."""
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        eps = rng.standard_normal((n, self.means.shape[1]))
        chol = np.linalg.cholesky(self.covs)
        return self.means[comp] + np.einsum("nij,nj->ni", chol[comp], eps)

    def _log_joint(self, z) -> np.ndarray:
        """log w_k + log N(z | mu_k, S_k), (N, K) in float64; the (N, K, D) whitened
        points are computed in z's dtype."""
        d = z.shape[1]
        chol = np.linalg.cholesky(self.covs)  # (K, D, D)
        inv = np.linalg.inv(chol)  # (K, D, D): the K solves as one BLAS matmul
        k = len(self.weights)
        sol = (z @ inv.transpose(2, 0, 1).reshape(d, k * d).astype(z.dtype)).reshape(-1, k, d)
        sol -= np.einsum("kij,kj->ki", inv, self.means).astype(z.dtype)[None]
        maha = np.square(sol).sum(-1, dtype=np.float64)
        logdet = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(-1)
        return np.log(self.weights)[None] - 0.5 * (maha + logdet[None] + d * np.log(2 * np.pi))


def _logsumexp(a, axis):
    m = a.max(axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis, keepdims=True))).squeeze(axis)


def _kmeans_pp(z, k: int, rng) -> np.ndarray:
    """k initial means (k, D) drawn from points z (N, D) by greedy k-means++.

    Each new mean is the best (least total squared distance to the nearest mean) of a few
    candidates drawn with probability proportional to that squared distance, as in
    scikit-learn's k-means. Points that already sit on a mean are never drawn unless all
    do: then fewer than k distinct points exist and a mean is repeated.

    Args:
      z: points (N, D), float64.
      k: number of means.
      rng: numpy Generator the draws come from.

    Returns:
      means (k, D), rows of z.
    """
    n = len(z)
    trials = 2 + int(np.log(k))
    means = [z[rng.integers(n)]]
    d2 = np.square(z - means[0]).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total > 0:
            # side="right" skips the points whose weight is zero (the chosen means)
            cand = np.searchsorted(np.cumsum(d2), rng.random(trials) * total, side="right")
            cand = np.minimum(cand, n - 1)
        else:
            cand = rng.integers(n, size=1)
        cand_d2 = np.minimum(d2[None], np.square(z[None] - z[cand][:, None]).sum(-1))
        best = cand_d2.sum(1).argmin()
        means.append(z[cand[best]])
        d2 = cand_d2[best]
    return np.stack(means)


def _kmeans(z, k: int, rng, iters: int = 100) -> np.ndarray:
    """Hard cluster labels (N,) of points z (N, D): Lloyd's k-means from k-means++ means,
    the start scikit-learn's GaussianMixture uses (EM from it finds better optima than
    from the means alone). A cluster that empties keeps its mean."""
    means = _kmeans_pp(z, k, rng)
    labels = None
    for _ in range(iters):
        d2 = np.square(means).sum(1)[None] - 2 * z @ means.T  # + |z|^2, the same for all k
        new = d2.argmin(1)
        if labels is not None and (new == labels).all():
            break
        labels = new
        for c in range(k):
            if (labels == c).any():
                means[c] = z[labels == c].mean(0)
    return labels


def _covariances(z, z32, resp, means, nk, floor) -> np.ndarray:
    """The M-step's covariances (K, D, D) plus diag(floor), each positive definite.

    They are computed in float32 (the O(N K D^2) part of an iteration); a component whose
    float32 covariance is not positive definite (nearly singular, e.g. on codes that fill
    a subspace) is recomputed in float64, and failing that, jittered.

    Args:
      z: centred points (N, D), float64; z32 the same in float32.
      resp: responsibilities (N, K).
      means: component means (K, D).
      nk: responsibility mass of each component (K,), > 0.
      floor: (D,) added to every covariance's diagonal.

    Returns:
      covariances (K, D, D), float64, symmetric, with a Cholesky factor in float64.
    """
    k = len(means)
    covs = np.empty((k, z.shape[1], z.shape[1]))
    for c in range(k):  # sum_n r_nk (z_n - mu_k)(z_n - mu_k)^T / n_k: a D x N x D matmul
        dz = z32 - means[c].astype(np.float32)
        covs[c] = (dz * resp[:, c : c + 1].astype(np.float32)).T @ dz / nk[c]
    covs = (covs + covs.transpose(0, 2, 1)) / 2 + np.diag(floor)
    if _is_pd(covs):
        return covs
    for c in range(k):
        if not _is_pd(covs[c]):
            dz = z - means[c]
            cov = (dz * resp[:, c : c + 1]).T @ dz / nk[c]
            covs[c] = _jittered((cov + cov.T) / 2 + np.diag(floor))
    return covs


def _is_pd(a) -> bool:
    """Whether every (..., D, D) matrix in a has a float64 Cholesky factor."""
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return False
    return True


def _jittered(cov) -> np.ndarray:
    """cov (D, D) plus the smallest of growing multiples of its mean diagonal (from 1e-12
    of it) that make it positive definite: rounding in a float64 covariance of points at
    wildly different scales can still exceed the floor."""
    scale = max(np.abs(np.diagonal(cov)).mean(), np.finfo(np.float64).tiny)
    jitter = 1e-12 * scale
    out = cov
    while not _is_pd(out):
        out = cov + jitter * np.eye(len(cov))
        jitter *= 10
    return out


def _em(z, z32, gmm: GaussianMixture, floor, iters: int, tol: float):
    """EM from gmm on centred points z (N, D) (z32: the same in float32) until the mean
    log-likelihood gains < tol or after iters iterations.

    Returns:
      (the fitted GaussianMixture, the mean log-likelihood of the last E-step).
    """
    n = len(z)
    last = -np.inf
    for _ in range(iters):
        joint = gmm._log_joint(z32)
        ll = _logsumexp(joint, axis=1)
        resp = np.exp(joint - ll[:, None])  # (N, K) responsibilities
        nk = resp.sum(0) + 1e-12
        means = (resp.T @ z) / nk[:, None]
        gmm = GaussianMixture(nk / n, means, _covariances(z, z32, resp, means, nk, floor))
        if ll.mean() - last < tol:
            return gmm, ll.mean()
        last = ll.mean()
    return gmm, last


def fit_gmm(
    z,
    k: int = 10,
    *,
    iters: int = 200,
    tol: float = 1e-6,
    seed: int = 0,
    reg: float = 1e-6,
    reg_covar: float = 1e-6,
    n_init: int = 1,
) -> GaussianMixture:
    """Fit a K-component full-covariance mixture to points z (N, D) by EM.

    The start is k-means (from k-means++ seeds drawn with ``seed``): each hard cluster's
    mean, covariance and share of the points; with ``n_init`` > 1, EM runs from that many
    such starts and the most likely fit wins. Every covariance's diagonal gets ``reg_covar``
    (an absolute floor in the units of z, scikit-learn's default) plus ``reg`` times that
    dimension's variance (a floor that scales with each dimension), so no component
    collapses on a point, a constant or duplicated dimension, or fewer than k distinct
    points. Stops when the mean log-likelihood gains < ``tol``.

    Each iteration's two O(N K D^2) matmuls (whitening every point for every component,
    and the covariances) run in float32, on points centred on their mean so that no
    large offset is lost to rounding; the likelihood, means and Cholesky factors stay in
    float64. At D = 64 that halves an iteration's time. A covariance that float32
    rounding leaves without a Cholesky factor is recomputed in float64.

    Args:
      z: points (N, D), finite.
      k: number of components; N >= k.
      iters: most EM iterations of each start.
      tol: least gain in mean log-likelihood per iteration that goes on.
      seed: seed of the k-means++ draws.
      reg: relative covariance floor, times each dimension's variance.
      reg_covar: absolute covariance floor.
      n_init: number of starts.

    Returns:
      the fitted GaussianMixture, in the coordinates of z.
    """
    z = np.asarray(z, np.float64)
    n, d = z.shape
    if n < k:
        raise ValueError(f"a {k}-component mixture needs at least {k} points, got {n}")
    if not np.isfinite(z).all():
        raise ValueError("a mixture needs finite points: z holds NaN or inf")
    centre = z.mean(0)
    z = z - centre
    z32 = z.astype(np.float32)
    floor = reg_covar + reg * z.var(0)
    rng = np.random.default_rng(seed)
    best, best_ll = None, -np.inf
    for _ in range(n_init):
        resp = np.eye(k)[_kmeans(z, k, rng)]
        nk = resp.sum(0) + 1e-12
        means = (resp.T @ z) / nk[:, None]
        start = GaussianMixture(nk / n, means, _covariances(z, z32, resp, means, nk, floor))
        gmm, ll = _em(z, z32, start, floor, iters, tol)
        if best is None or ll > best_ll:
            best, best_ll = gmm, ll
    return GaussianMixture(best.weights, best.means + centre, best.covs)
