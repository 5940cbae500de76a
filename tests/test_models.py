import dataclasses

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


@pytest.mark.parametrize(
    "shape", [(784, 64), (64, 7), (64, 4096), (256, 2), (3, 3, 1, 32), (3, 3, 32, 64), (5, 3)]
)
def test_kernel_init_is_flax_lecun_normal_bit_for_bit(shape):
    # the draws are cut from one of a power-of-two length: the same numbers as flax's,
    # alone and vmapped over members' keys (as the sweep initialises them)
    import flax.linen as nn

    from jaxae.models import kernel_init

    flax_init = nn.initializers.lecun_normal()
    keys = jax.vmap(jax.random.key)(jnp.arange(3))
    ours = jax.vmap(lambda k: kernel_init(k, shape))(keys)
    theirs = jax.vmap(lambda k: flax_init(k, shape))(keys)
    assert ours.shape == (3, *shape) and ours.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    key = jax.random.fold_in(jax.random.key(7), 1)
    np.testing.assert_array_equal(np.asarray(kernel_init(key, shape)), flax_init(key, shape))


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


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_padded_masked_model_equals_small_model(arch):
    small = dataclasses.replace(CFG, arch=arch)
    big = ModelConfig(kind="vae", arch=arch, hidden=(16, 8), latent=7)
    small_params = init_params(small, jax.random.key(0))
    big_params = embed(small_params, init_params(big, jax.random.key(9)))  # non-zero padding
    mask = (jnp.arange(7) < 3).astype(jnp.float32)
    x = jax.random.uniform(jax.random.key(1), (5, 784))
    a = Model(small).apply(small_params, x, key=jax.random.key(2))
    b = Model(big).apply(big_params, x, key=jax.random.key(2), mask=mask)
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b["mean"][:, 3:], 0.0)
    np.testing.assert_array_equal(b["logvar"][:, 3:], 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latent": 0},
        {"hidden": (8, 0)},
        {"beta": -1.0},
        {"kind": "gan"},
        {"likelihood": "x"},
        {"arch": "resnet"},
        {"arch": "conv", "image_shape": (30, 30, 1)},
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        ModelConfig(**kwargs)


def test_package_exports():
    import jaxae

    for name in jaxae.__all__:
        assert getattr(jaxae, name) is not None


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_conv_pair_shapes_and_layers(kind):
    cfg = ModelConfig(kind=kind, arch="conv", hidden=(32,), latent=5, image_shape=(28, 28, 1))
    params = init_params(cfg, jax.random.key(0))["params"]
    enc, dec = params["encoder"], params["decoder"]
    # two stride-2 3x3 convolutions, 1 -> 32 -> 64 channels, 28 -> 14 -> 7
    assert enc["Conv_0"]["kernel"].shape == (3, 3, 1, 32)
    assert enc["Conv_1"]["kernel"].shape == (3, 3, 32, 64)
    assert enc["Dense_0"]["kernel"].shape == (7 * 7 * 64, 32)
    assert enc["mean"]["kernel"].shape == (32, 5) and ("logvar" in enc) == (kind == "vae")
    assert dec["Dense_1"]["kernel"].shape == (32, 7 * 7 * 64)
    # upsampling by sub-pixel convolutions: 7x7x64 -> 7x7x(4*32) -> 14x14x32 -> 28x28x1
    assert dec["Conv_0"]["kernel"].shape == (3, 3, 64, 4 * 32)
    assert dec["out"]["kernel"].shape == (3, 3, 32, 4 * 1)
    x = jax.random.uniform(jax.random.key(1), (4, 784))
    out = Model(cfg).apply({"params": params}, x, key=jax.random.key(2))
    assert out["logits"].shape == (4, 784) and out["mean"].shape == (4, 5)
    assert np.isfinite(np.asarray(out["logits"])).all()
    # an image's pixels reach the code through the convolutions: a local change moves it
    y = x.at[0, 14 * 28 + 14].set(1.0 - x[0, 14 * 28 + 14])
    moved = Model(cfg).apply({"params": params}, y, method=Model.encode)[0]
    assert not np.allclose(moved[0], out["mean"][0]) and np.allclose(moved[1:], out["mean"][1:])


def test_depth_to_space_by_hand():
    from jaxae.models import depth_to_space

    z = np.arange(2 * 4 * 3).reshape(1, 1, 2, 12)  # one row of two pixels, 4 x 3 channels
    out = np.asarray(depth_to_space(jnp.asarray(z)))
    assert out.shape == (1, 2, 4, 3)
    # pixel (0, j)'s channel block k = 2*di + dj (3 channels each) lands at (di, 2*j + dj)
    for j in range(2):
        for di in range(2):
            for dj in range(2):
                k = 2 * di + dj
                np.testing.assert_array_equal(out[0, di, 2 * j + dj], z[0, 0, j, 3 * k : 3 * k + 3])


def test_funnel_cuts_the_seed_encoder_above_each_latent():
    from jaxae.config import funnel_hidden, grid
    from jaxae.sweep import group_members

    funnel = (512, 256, 128, 64, 32, 12, 6, 3, 2)
    assert funnel_hidden(funnel, 2) == (512, 256, 128, 64, 32, 12, 6, 3)
    assert funnel_hidden(funnel, 6) == (512, 256, 128, 64, 32, 12)
    assert funnel_hidden(funnel, 12) == (512, 256, 128, 64, 32)
    assert funnel_hidden(funnel, 20) == (512, 256, 128, 64, 32)
    members = grid(ModelConfig(), {"kind": ["vae"], "latent": [2, 6, 12]}, 2, funnel=funnel)
    assert [m.model.hidden for m in members[::2]] == [funnel_hidden(funnel, k) for k in (2, 6, 12)]
    assert len(group_members(members)) == 3  # different depths: one group each
