"""Checkpoints written by earlier versions of jaxae keep loading.

``tests/fixtures/checkpoints`` holds two small runs trained with
``python -m jaxae.train`` (one model, the one-model layout: an unstacked state) and
``python -m experiments.latent_sweep`` (two groups of stacked members); each recorded its
test metrics in results.json when it was trained. Loaded today, every member must give
the same test loss and a model of its own latent size.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import jaxae

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"


def recorded_loss(run: Path) -> list[float]:
    doc = json.loads((run / "results.json").read_text())
    if "test" in doc:  # a single model's runner result
        return doc["test"]["loss"]
    return [m["test_loss"] for m in doc["members"]]


@pytest.mark.parametrize("name", ["single", "sweep"])
def test_saved_runs_load_and_give_their_recorded_test_loss(name, tmp_path):
    run_dir = tmp_path / name  # a copy: loading never writes, but a test must not rely on it
    shutil.copytree(FIXTURES / name, run_dir)
    run = jaxae.load(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    assert [m.name for m in run.members] == saved["members"]
    np.testing.assert_allclose(run.test_metrics()["loss"], recorded_loss(run_dir), rtol=2e-5)
    x, xt, _ = run.test_set(0, count=8)
    for i, m in enumerate(run.members):
        z = run.encode(i, xt)
        assert z.shape == (8, m.model.latent)
        assert run.decode(i, z).shape == (8, *m.model.image_shape)


def test_a_one_model_run_of_the_earlier_layout_resumes(tmp_path):
    # its unstacked state becomes a one-member group; one more epoch trains and saves in
    # the one layout, which loads back to the metrics the run reported
    from jaxae.config import model_from_dict, train_from_dict
    from jaxae.runner import fit

    shutil.copytree(FIXTURES / "single", tmp_path / "m" / "single")
    saved = json.loads((FIXTURES / "single" / "config.json").read_text())
    cfg, tcfg = model_from_dict(saved["model"]), train_from_dict(saved["train"])
    more = dataclasses.replace(tcfg, epochs=tcfg.epochs + 1)
    kw = {"models_dir": tmp_path / "m", "runs_dir": tmp_path / "r", "progress": False}
    res = fit(cfg, more, "single", resume=True, **kw)
    assert res["steps"] == 16 and res["timing"]["steps"] == 8  # 512 examples, batch 64
    run = jaxae.load(tmp_path / "m" / "single")
    assert run.step == 16 and run.config["type"] == "sweep"
    np.testing.assert_allclose(run.test_metrics()["loss"], res["test"]["loss"], rtol=2e-5)
    assert res["test"]["loss"][0] < recorded_loss(FIXTURES / "single")[0]  # it trained on
