"""Strict JAX settings and shared fixtures for the test suite."""

import os
import pathlib

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _data_dir():
    env = os.environ.get("JAXAE_DATA_DIR")
    if env:
        return pathlib.Path(env)
    shared = ROOT.parent / "shared" / "data"
    return shared if shared.exists() else None


@pytest.fixture(scope="session")
def data_dir():
    """Folder holding mnist/ with the real IDX files. Missing real data is a failure, not a skip."""
    d = _data_dir()
    assert d is not None and (d / "mnist").is_dir(), (
        "real MNIST not found: set JAXAE_DATA_DIR to a folder holding mnist/"
    )
    return d


# commands run by the tests keep no compilation cache in the home folder (a test that
# wants one passes --compile-cache)
os.environ.setdefault("JAXAE_COMPILE_CACHE", "off")

if _data_dir() is not None:  # for module-scoped fixtures and subprocesses too
    os.environ["JAXAE_DATA_DIR"] = str(_data_dir())


@pytest.fixture(scope="session", autouse=True)
def classifier_dir(tmp_path_factory, data_dir):
    """A quickly trained digit classifier (1 epoch on 2,560 digits) that every command run
    by the tests finds through $JAXAE_CLASSIFIER_DIR, so no test trains the full one."""
    from jaxae import quality

    root = tmp_path_factory.mktemp("classifier")
    quality.fit_classifier(
        quality.default_path(root, "mnist"), "mnist", epochs=1, train_size=2560, log=lambda m: None
    )
    os.environ["JAXAE_CLASSIFIER_DIR"] = str(root)
    return root
