"""Architectures: a user's own encoder/decoder pair, conv models through the CLIs."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from helpers import tiny_model, tiny_train

from jaxae import config, models
from jaxae.config import ConfigError, Member, ModelConfig, SweepConfig


class LinearEncoder(nn.Module):
    """The protocol's encoder: (B, F) -> (mean, logvar or None), each (B, latent)."""

    latent: int
    stochastic: bool

    @nn.compact
    def __call__(self, x):
        mean = nn.Dense(self.latent, name="mean")(x)
        return mean, (nn.Dense(self.latent, name="logvar")(x) if self.stochastic else None)


class LinearDecoder(nn.Module):
    features: int

    @nn.compact
    def __call__(self, z):
        return nn.Dense(self.features)(z)


def linear(cfg: ModelConfig):
    return LinearEncoder(cfg.latent, cfg.kind == "vae"), LinearDecoder(cfg.features)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(models.ARCHITECTURES, "linear", None)  # restored after the test
    monkeypatch.setitem(config.ARCHS, "linear", "")
    models.register_architecture("linear", linear, "one dense layer each way")
    yield


def test_unregistered_architecture_is_refused():
    with pytest.raises(ConfigError, match="arch must be one of \\('mlp', 'conv'"):
        ModelConfig(arch="linear")


def test_a_user_pair_trains_in_a_sweep_beside_mlp_members_and_loads(registered, tmp_path):
    from jaxae.restore import load
    from jaxae.runner import fit_sweep

    rng = np.random.default_rng(0)
    data = tuple((rng.random((n, 784)) < 0.2).astype(np.uint8) * 255 for n in (256, 100))
    tcfg = tiny_train(dataset="in-memory", train_size=None, epochs=1)
    members = (
        Member(tiny_model(arch="linear", latent=2), 0),
        Member(tiny_model(arch="linear", latent=4), 0),
        Member(tiny_model(latent=2), 0),
    )
    kw = {"models_dir": tmp_path / "m", "runs_dir": tmp_path / "r", "progress": False}
    res, prog = fit_sweep(SweepConfig(members, tcfg), "mine", data=data, **kw)
    assert len(prog.state) == 2  # the linear pair and the MLP: two groups, one program
    assert res["members"][0] == "vae,arch=linear,latent=2,beta=1,seed=0"
    assert res["members"][2] == "vae,latent=2,beta=1,seed=0"  # names of earlier runs kept
    assert np.isfinite(res["test"]["loss"]).all()
    run = load(tmp_path / "m" / "mine")
    assert run.members[1].model.arch == "linear"
    assert set(run.params(1)["params"]["encoder"]) == {"mean", "logvar"}
    z = jax.random.normal(jax.random.key(0), (3, 4))
    assert run.decode(1, z).shape == (3, 28, 28, 1)
