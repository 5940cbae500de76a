"""The wheel: it installs the ``jaxae`` package only, and its console scripts run
``jaxae`` functions (``experiments/`` and ``benchmarks/`` stay in the repository)."""

import configparser
import importlib
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers import ROOT

# what the build reads; copied so the build's own folders stay out of the working tree
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "jaxae", "experiments", "benchmarks")


@pytest.fixture
def classifier_dir():
    """No digit classifier: these tests run no command that scores samples."""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        path = pathlib.Path(ROOT) / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
    p = subprocess.run([*cmd, "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (built,) = out.glob("jaxae-*.whl")
    with zipfile.ZipFile(built) as z:
        yield z


def test_the_wheel_installs_jaxae_only(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    packages = {t for t in top if not t.endswith((".dist-info", ".data"))}
    assert packages == {"jaxae"}, packages
    assert "jaxae/__init__.py" in wheel.namelist()
    assert "jaxae/cli/sweep.py" in wheel.namelist()


def test_console_scripts_name_importable_jaxae_functions(wheel):
    (path,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(path).decode())
    scripts = dict(entry_points["console_scripts"])
    assert {"jaxae-train", "jaxae-latent-sweep", "jaxae-beta-sweep"} <= set(scripts)
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert module.split(".")[0] == "jaxae", (name, target)
        assert callable(getattr(importlib.import_module(module), func)), (name, target)
