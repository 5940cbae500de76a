"""Strict JAX settings and shared fixtures for the test suite."""

import os
import pathlib
import shutil
import tempfile

# Every process of the test session (pytest's workers, the commands and scripts the tests
# run) shares one persistent compilation cache, fresh for each session and never the home
# folder's: the same small programs (the initialisers above all) compile once. Set before
# JAX is imported; the controller makes it, xdist workers and subprocesses inherit it.
_SESSION_CACHE = None
if "JAXAE_COMPILE_CACHE" not in os.environ:
    _SESSION_CACHE = os.environ["JAXAE_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="jaxae-xla-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["JAXAE_COMPILE_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# unbounded: processes that evict least-recently-used entries at once race on the same
# files (JAX warns on stderr); the folder goes at the session's end
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", "-1")

import jax  # noqa: E402
import pytest  # noqa: E402

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


# the longest files first: with ``--dist loadfile`` a long file collected last would leave
# one worker running it alone at the end (a stable sort: the rest keep their order)
LONGEST_FIRST = ("test_smoke_devices.py", "test_smoke.py", "test_sweep.py", "test_hosts.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_CACHE and "PYTEST_XDIST_WORKER" not in os.environ:  # the process that made it
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


if _data_dir() is not None:  # for module-scoped fixtures and subprocesses too
    os.environ["JAXAE_DATA_DIR"] = str(_data_dir())


@pytest.fixture(scope="session", autouse=True)
def classifier_dir(tmp_path_factory, data_dir):
    """$JAXAE_CLASSIFIER_DIR for every command run by the tests, holding a checkpoint
    folder (``classifier-mnist``) of the shipped MNIST classifier: the same params and
    config, so the same digest. MNIST samples are scored with the shipped classifier by
    default and with this folder where a test names it (``--classifier``); no test trains
    the full classifier."""
    import json

    import numpy as np

    from jaxae import quality
    from jaxae.checkpoint import Checkpointer

    root = tmp_path_factory.mktemp("classifier")
    clf = quality.load_shipped("mnist")
    with np.load(quality.shipped_path("mnist")) as z:
        cfg = json.loads(str(z["config"]))
    with Checkpointer(quality.default_path(root, "mnist"), max_to_keep=1, local=True) as mgr:
        mgr.save(1, {"params": clf.params}, cfg, wait=True)
    os.environ["JAXAE_CLASSIFIER_DIR"] = str(root)
    return root
