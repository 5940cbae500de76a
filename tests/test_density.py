"""The ex-post Gaussian mixture on latent codes, against closed forms."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from jaxae.density import GaussianMixture, fit_gmm

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
