import json

import jax
import numpy as np
import pytest
from helpers import run_cli, run_py, tiny_model, tiny_train

from jaxae import step as train
from jaxae import sweep as jsweep
from jaxae.config import ConfigError, Member, SweepConfig
from jaxae.runner import run


def _run(prog, tcfg, path, name="r"):
    return run(prog, tcfg, name, models_dir=path / "m", runs_dir=path / "r", progress=False)


@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory):
    """A mixed sweep: VAE latents {2, 8} x betas {1, 4}, two seeds for one config, and AEs."""
    members = [Member(tiny_model(latent=k, beta=b), 0) for k in (2, 8) for b in (1.0, 4.0)]
    members += [Member(tiny_model(latent=2, beta=1.0), 1)]
    members += [Member(tiny_model(kind="ae", likelihood="gaussian", latent=k), 0) for k in (3, 5)]
    sweep = SweepConfig(tuple(members), tiny_train())
    prog = jsweep.sweep_program(sweep)
    res = _run(prog, sweep.train, tmp_path_factory.mktemp("sweep"))
    return sweep, prog, res


def test_one_program_two_groups(trained_sweep):
    sweep, prog, res = trained_sweep
    assert len(prog.state) == 2  # the VAEs and the AEs, advanced in one scanned step
    assert res["steps"] == 20 and len(res["test"]["loss"]) == len(sweep.members)


@pytest.mark.parametrize("i", range(7))
def test_member_matches_standalone_run(trained_sweep, tmp_path, i):
    sweep, prog, res = trained_sweep
    m = sweep.members[i]
    tcfg = tiny_train(seed=m.seed)
    alone = train.single_program(m.model, tcfg)
    alone_res = _run(alone, tcfg, tmp_path)
    got = jsweep.member_params(prog.state, sweep, i)
    for a, b in zip(jax.tree.leaves(alone.state["params"]), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(alone_res["test"]["loss"][0], res["test"]["loss"][i], rtol=1e-4)


def test_padded_weights_stay_zero(trained_sweep):
    sweep, prog, _ = trained_sweep
    vaes = prog.state[0]["params"]["params"]
    head = np.asarray(vaes["encoder"]["mean"]["kernel"])  # (members, hidden, 8)
    first = np.asarray(vaes["decoder"]["Dense_0"]["kernel"])  # (members, 8, hidden)
    assert np.all(head[0, :, 2:] == 0) and np.all(first[0, 2:, :] == 0)  # latent-2 member
    assert np.any(head[2, :, 2:] != 0)  # the latent-8 member uses all its dims


def test_bad_sweeps():
    with pytest.raises(ConfigError, match="at least one member"):
        SweepConfig((), tiny_train())
    m = Member(tiny_model(), 0)
    with pytest.raises(ConfigError, match="distinct"):
        SweepConfig((m, m), tiny_train())


SHARDED = """
import json, sys
import jax
from helpers import tiny_model, tiny_train
from jaxae.config import Member, SweepConfig
from jaxae.sweep import sweep_program
from jaxae.runner import run
assert jax.device_count() == 8, jax.devices()
members = [Member(tiny_model(latent=k, beta=b), s)
           for k in (2, 8) for b in (1.0, 4.0) for s in (0, 1)]
sweep = SweepConfig(tuple(members), tiny_train())
prog = sweep_program(sweep)
shard = prog.state[0]["params"]["params"]["encoder"]["mean"]["kernel"].sharding
res = run(prog, sweep.train, "s", models_dir=sys.argv[1] + "/m", runs_dir=sys.argv[1] + "/r",
          progress=False)
print(json.dumps({"loss": res["test"]["loss"], "shards": len(shard.device_set)}))
"""


def test_sharded_sweep_matches_unsharded(tmp_path):
    out = []
    for flags in ("--xla_force_host_platform_device_count=8", ""):
        d = tmp_path / str(len(out))
        d.mkdir()
        script = d / "s.py"
        script.write_text(
            SHARDED.replace("assert jax.device_count() == 8", "assert True")
            if not flags
            else SHARDED
        )
        p = run_py(str(script), str(d), env={"XLA_FLAGS": flags})
        assert p.returncode == 0, p.stderr[-2000:]
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    sharded, single = out
    assert sharded["shards"] == 8 and single["shards"] == 1
    np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-4)


def test_latent_sweep_cli(tmp_path):
    p = run_cli(
        "experiments.latent_sweep",
        "--latents",
        "2",
        "4",
        "--seeds",
        "2",
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--train-size",
        "640",
        "--no-progress",
        "--models-dir",
        str(tmp_path / "m"),
        "--runs-dir",
        str(tmp_path / "r"),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "m" / "latent_sweep"
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["members"]) == 8 and len(doc["summary"]) == 4
    assert all(s["seeds"] == 2 for s in doc["summary"])
    for png in ("latent_sweep.png", "samples.png"):
        assert (out / png).stat().st_size > 10_000
    assert all("active_units" in m and "pca_mse" in m for m in doc["members"])
    assert (out / "results.csv").read_text().count("\n") == 9
    assert len(list((tmp_path / "r" / "latent_sweep").iterdir())) == 8  # one run per member
    assert "PCA" in p.stdout
