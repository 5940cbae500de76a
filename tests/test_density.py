"""The ex-post Gaussian mixture on latent codes, against closed forms."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from jaxae.density import GaussianMixture, _kmeans_pp, fit_gmm

TRUE = GaussianMixture(
    weights=np.array([0.3, 0.7]),
    means=np.array([[-4.0, 0.0], [3.0, 2.0]]),
    covs=np.array([[[1.0, 0.5], [0.5, 2.0]], [[0.5, 0.0], [0.0, 0.3]]]),
)


def test_log_density_is_the_mixture_of_gaussian_densities():
    z = np.random.default_rng(0).normal(size=(50, 2)) * 3
    by_hand = sum(
        w * multivariate_normal(m, c).pdf(z)
        for w, m, c in zip(TRUE.weights, TRUE.means, TRUE.covs, strict=True)
    )
    np.testing.assert_allclose(TRUE.log_density(z), np.log(by_hand), rtol=1e-10)


def test_em_recovers_a_known_mixture():
    z = TRUE.sample(20000, seed=1)
    gmm = fit_gmm(z, 2, seed=0)
    order = np.argsort(gmm.means[:, 0])  # components come back in any order
    np.testing.assert_allclose(gmm.weights[order], TRUE.weights, atol=0.01)
    np.testing.assert_allclose(gmm.means[order], TRUE.means, atol=0.05)
    np.testing.assert_allclose(gmm.covs[order], TRUE.covs, atol=0.05)
    # the fit is at least as likely as the truth on its own data (EM maximises it)
    assert gmm.log_density(z).mean() >= TRUE.log_density(z).mean() - 1e-3


def test_samples_follow_the_mixture():
    z = TRUE.sample(40000, seed=2)
    mean = (TRUE.weights[:, None] * TRUE.means).sum(0)
    np.testing.assert_allclose(z.mean(0), mean, atol=0.05)
    assert np.mean(z[:, 0] < -0.5) == pytest.approx(0.3, abs=0.01)


def test_too_few_points():
    with pytest.raises(ValueError, match="at least 10 points"):
        fit_gmm(np.zeros((5, 2)), 10)


def test_a_far_offset_changes_nothing_but_the_means():
    # the heavy matmuls run in float32: without centring, whitening points near 1e4
    # cancels most of their digits and the covariances come out wrong
    z = TRUE.sample(5000, seed=3)
    near, far = fit_gmm(z, 2, seed=0), fit_gmm(z + 1e4, 2, seed=0)
    np.testing.assert_allclose(far.means - 1e4, near.means, atol=1e-6)
    np.testing.assert_allclose(far.covs, near.covs, atol=1e-6)
    np.testing.assert_allclose(far.weights, near.weights, atol=1e-6)


def _collapsed_codes(n=5000, d=64, seed=1):
    """Codes of a collapsed encoder: a ReLU of 2 directions spread over d dimensions, so
    the covariance has rank <= 2 plus dead (constant) dimensions."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, 2))
    return np.maximum(h @ rng.normal(size=(2, d)) + rng.normal(0, 0.5, d), 0).astype(np.float32)


def _degenerate(name):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2000, 8))
    if name == "constant dimension":
        z[:, 3] = 1.5
    elif name == "duplicated dimension":
        z[:, 1] = z[:, 0]
    elif name == "ten identical points":
        z = np.tile(z[:1], (10, 1))
    elif name == "all zero":
        z = np.zeros((500, 8))
    elif name == "scales 1e-8 to 1e6":
        z = z * np.array([1e-8, 1e-6, 1e-3, 1, 1, 1e3, 1e6, 1e6])
        z[:, 7] = z[:, 6] + 1e-3 * z[:, 2]  # two huge, almost equal dimensions
    elif name == "rank 3 in 64 dimensions":
        z = rng.normal(size=(5000, 3)) @ rng.normal(size=(3, 64))
    elif name == "collapsed ReLU codes":
        z = _collapsed_codes()
    return z


@pytest.mark.parametrize(
    "name",
    [
        "constant dimension",
        "duplicated dimension",
        "ten identical points",
        "all zero",
        "scales 1e-8 to 1e6",
        "rank 3 in 64 dimensions",
        "collapsed ReLU codes",
    ],
)
def test_degenerate_codes_fit_with_a_finite_likelihood(name):
    z = _degenerate(name)
    gmm = fit_gmm(z, 10, seed=0, tol=1e-3)  # as code_density calls it
    assert np.isfinite(gmm.log_density(z)).all()
    assert np.isfinite(gmm.sample(100, seed=0)).all()


def test_untrained_autoencoder_codes_fit(data_dir):
    # an untrained ReLU encoder's codes of real digits: many dimensions dead (constant 0),
    # the rest correlated, which broke the Cholesky factorisation
    from jaxae.data import load

    x = load("mnist", "train", data_dir=data_dir)[0][:5000].reshape(5000, -1) / 255.0
    rng = np.random.default_rng(0)
    h = np.maximum(x @ rng.normal(0, 1 / 28, (784, 256)), 0)
    z = np.maximum(h @ rng.normal(0, 1 / 16, (256, 64)) + rng.normal(0, 0.3, 64) - 0.3, 0)
    assert (z.std(0) == 0).sum() >= 5
    gmm = fit_gmm(z.astype(np.float32), 10, seed=0, tol=1e-3)
    assert np.isfinite(gmm.log_density(z)).all()


def test_the_covariance_floor_is_absolute():
    # identical points: each component is the point with covariance reg_covar * I
    z = np.tile([[2.0, -1.0, 0.5]], (10, 1))
    gmm = fit_gmm(z, 10, seed=0)
    np.testing.assert_allclose(gmm.covs, np.broadcast_to(1e-6 * np.eye(3), (10, 3, 3)), rtol=1e-9)
    np.testing.assert_allclose(gmm.means, np.broadcast_to(z[0], (10, 3)), atol=1e-12)
    expected = -0.5 * 3 * np.log(2 * np.pi * 1e-6)
    np.testing.assert_allclose(gmm.log_density(z), expected, rtol=1e-9)


def test_kmeans_pp_starts_on_distinct_points_even_if_duplicated():
    # 3 distinct points repeated 20 times each: k-means++ never draws a point that sits
    # on a chosen mean, so 3 means are the 3 points; with k > 3 it repeats them
    pts = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 7.0]])
    z = np.repeat(pts, 20, axis=0)
    for seed in range(5):
        means = _kmeans_pp(z, 3, np.random.default_rng(seed))
        assert sorted(map(tuple, means)) == sorted(map(tuple, pts))
    means = _kmeans_pp(z, 10, np.random.default_rng(0))
    assert {tuple(m) for m in means} == {tuple(p) for p in pts}
    gmm = fit_gmm(z, 10, seed=0)
    assert np.isfinite(gmm.log_density(z)).all()


def test_flat_codes_at_a_large_scale_are_as_likely_as_sklearn():
    # 3 clusters on a 3-dimensional plane in 16 dimensions, spread over hundreds: with the
    # absolute floor alone (reg=0) the float32 covariances lose positive definiteness, and
    # only float64 ones keep the 1e-6 variance off the plane that scikit-learn finds
    rng = np.random.default_rng(0)
    means = rng.normal(0, 10, (3, 3))
    z = (means[rng.integers(3, size=3000)] + rng.normal(size=(3000, 3))) @ rng.normal(
        0, 30, (3, 16)
    )
    ours = fit_gmm(z, 3, seed=0, reg=0).log_density(z).mean()
    assert ours >= _sklearn_score(z, 3) - 0.05


def _sklearn_score(z, k):
    """scikit-learn's mean log-likelihood per point (the golden value): full covariances,
    the same absolute floor, best of 5 k-means starts, run to convergence."""
    from sklearn.mixture import GaussianMixture as Reference

    ref = Reference(
        k,
        covariance_type="full",
        reg_covar=1e-6,
        n_init=5,
        tol=1e-6,
        max_iter=1000,
        random_state=0,
    )
    return ref.fit(z).score(z)


def test_as_likely_as_sklearn_on_a_separated_mixture():
    rng = np.random.default_rng(0)
    means = rng.normal(0, 6, (5, 4))
    z = means[rng.integers(5, size=3000)] + rng.normal(size=(3000, 4)) @ rng.normal(size=(4, 4))
    ours = fit_gmm(z, 5, seed=0, n_init=5).log_density(z).mean()
    assert ours >= _sklearn_score(z, 5) - 0.05


@pytest.mark.parametrize("codes", ["pca12", "projection16"])
def test_as_likely_as_sklearn_on_mnist_codes(data_dir, codes):
    from jaxae.data import load

    x = load("mnist", "train", data_dir=data_dir)[0][:3000].reshape(3000, -1) / 255.0
    x = x - x.mean(0)
    if codes == "pca12":
        z = x @ np.linalg.svd(x, full_matrices=False)[2][:12].T
    else:
        z = x @ np.random.default_rng(1).normal(0, 1 / 28, (784, 16))
    ours = fit_gmm(z, 10, seed=0, n_init=5).log_density(z).mean()
    assert ours >= _sklearn_score(z, 10) - 0.05
