import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import embed

from jaxae.config import ConfigError, ModelConfig
from jaxae.models import Model, init_params, latent_noise

CFG = ModelConfig(kind="vae", hidden=(16, 8), latent=3)


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_shapes_and_finite(kind):
    cfg = ModelConfig(kind=kind, hidden=(16, 8), latent=3)
    params = init_params(cfg, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (5, 784))
    out = Model(cfg).apply(params, x, key=jax.random.key(2))
    assert out["logits"].shape == (5, 784)
    assert out["mean"].shape == out["z"].shape == (5, 3)
    assert ("logvar" in out) == (kind == "vae")
    assert all(bool(jnp.isfinite(v).all()) for v in out.values())


def test_encode_decode_alone():
    params = init_params(CFG, jax.random.key(0))
    mean, logvar = Model(CFG).apply(params, jnp.zeros((2, 784)), method=Model.encode)
    assert mean.shape == logvar.shape == (2, 3)
    logits = Model(CFG).apply(params, jnp.zeros((4, 3)), method=Model.decode)
    assert logits.shape == (4, 784)


def test_vae_forward_needs_key():
    params = init_params(CFG, jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        Model(CFG).apply(params, jnp.zeros((2, 784)))


def test_latent_noise_columns_do_not_depend_on_width():
    k = jax.random.key(7)
    np.testing.assert_array_equal(latent_noise(k, 6, 8)[:, :3], latent_noise(k, 6, 3))


def test_padded_masked_model_equals_small_model():
    big = ModelConfig(kind="vae", hidden=(16, 8), latent=7)
    small_params = init_params(CFG, jax.random.key(0))
    big_params = embed(small_params, init_params(big, jax.random.key(9)))  # non-zero padding
    mask = (jnp.arange(7) < 3).astype(jnp.float32)
    x = jax.random.uniform(jax.random.key(1), (5, 784))
    a = Model(CFG).apply(small_params, x, key=jax.random.key(2))
    b = Model(big).apply(big_params, x, key=jax.random.key(2), mask=mask)
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b["mean"][:, 3:], 0.0)
    np.testing.assert_array_equal(b["logvar"][:, 3:], 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"latent": 0}, {"hidden": (8, 0)}, {"beta": -1.0}, {"kind": "gan"}, {"likelihood": "x"}],
)
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        ModelConfig(**kwargs)


def test_package_exports():
    import jaxae

    for name in jaxae.__all__:
        assert getattr(jaxae, name) is not None
