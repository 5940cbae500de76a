"""Architectures: a user's own encoder/decoder pair, conv models through the CLIs."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from helpers import run_cli, tiny_model, tiny_train

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


def test_conv_model_through_train_evaluate_and_sample(tmp_path):
    models_dir = tmp_path / "m"
    common = ["--models-dir", str(models_dir)]
    p = run_cli(
        "jaxae.train", "--arch", "conv", "--hidden", "--latent", "4", "--epochs", "1",
        "--train-size", "640", "--run", "c", "--runs-dir", str(tmp_path / "r"), *common,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    doc = (models_dir / "c" / "config.json").read_text()
    assert '"arch": "conv"' in doc
    # resumed with the saved command line, one more epoch
    p = run_cli("jaxae.train", "--run", "c", "--resume", "--epochs", "2", *common)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((models_dir / "c" / "results.json").read_text())["steps"] == 10
    ckpt = str(models_dir / "c")
    p = run_cli(
        "jaxae.evaluate", "--ckpt", ckpt, "--k", "5", "--chunk", "5", "--quality-samples", "0"
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "nll" in p.stdout.lower()
    p = run_cli("jaxae.sample", "--ckpt", ckpt, "--mode", "prior", "--out", str(tmp_path / "s.png"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
