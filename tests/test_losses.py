import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import likelihoods, losses


def test_kl_of_prior_with_itself_is_zero():
    kl = losses.gaussian_kl(jnp.zeros((3, 5)), jnp.zeros((3, 5)))
    np.testing.assert_array_equal(kl, np.zeros(3))


def test_kl_by_hand():
    # KL(N(1, e^1) || N(0, 1)) = 0.5 * (e + 1 - 1 - 1) per dim
    kl = losses.gaussian_kl(jnp.array([[1.0, 1.0]]), jnp.array([[1.0, 1.0]]))
    np.testing.assert_allclose(kl, [2 * 0.5 * (np.e - 1.0)], rtol=1e-6)


def test_bernoulli_two_pixels_by_hand():
    # p = (sigmoid(0), sigmoid(ln 3)) = (1/2, 3/4); x = (1, 0): -log(1/2) - log(1/4) = ln 8
    nll = likelihoods.bernoulli_nll(jnp.array([[0.0, np.log(3.0)]]), jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(nll, [np.log(8.0)], rtol=1e-6)


def test_squared_error_by_hand():
    se = likelihoods.squared_error(jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(se, [0.25 + 0.25], rtol=1e-6)


def test_gaussian_log_density_standard_normal():
    lp = losses.gaussian_log_density(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1, 2)))
    np.testing.assert_allclose(lp, [-np.log(2 * np.pi)], rtol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_elbo_is_recon_plus_beta_kl(beta):
    out = {"logits": jnp.zeros((2, 3)), "mean": jnp.ones((2, 4)), "logvar": jnp.zeros((2, 4))}
    x = jnp.ones((2, 3))
    loss, aux = losses.elbo_loss(out, x, beta=beta, likelihood="bernoulli")
    np.testing.assert_allclose(aux["recon"], 3 * np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(aux["kl"], 4 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(loss, aux["recon"] + beta * aux["kl"], rtol=1e-6)


def test_ae_loss_has_no_kl():
    out = {"logits": jnp.zeros((2, 3)), "mean": jnp.ones((2, 4))}
    loss, aux = losses.elbo_loss(out, jnp.ones((2, 3)), beta=1.0, likelihood="gaussian")
    np.testing.assert_array_equal(aux["kl"], 0.0)
    np.testing.assert_allclose(loss, 3 * 0.25, rtol=1e-6)
