"""The package's structure: imports flow one way, the CLI is one layer, registries are
read everywhere, and the loop runs on in-memory arrays."""

import ast
import dataclasses
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, tiny_model, tiny_train

from jaxae import likelihoods, losses
from jaxae.config import AXES, ConfigError, Member, ModelConfig, grid, structure
from jaxae.sweep import group_members

PKG = pathlib.Path(ROOT) / "jaxae"

# Layers, lowest first: a module may import modules of its own or a lower layer only.
LAYERS = [
    {
        "jaxae.data",
        "jaxae.likelihoods",
        "jaxae.plots",
        "jaxae.hosts",
        "jaxae.density",
        "jaxae.keys",
    },
    {"jaxae.checkpoint"},
    {"jaxae.config", "jaxae.summary"},
    {"jaxae.models", "jaxae.losses"},
    {"jaxae.step", "jaxae.evaluation"},
    {"jaxae.sweep"},
    {"jaxae.runner", "jaxae.restore", "jaxae.quality"},
    {"jaxae.metrics", "jaxae.generate"},
    {"jaxae.pipeline"},
    {
        "jaxae.cli",
        "jaxae.cli.train",
        "jaxae.cli.sample",
        "jaxae.cli.evaluate",
        "jaxae.cli.sweep",
        "jaxae.cli.classifier",
    },
    {
        "jaxae.train",
        "jaxae.sample",
        "jaxae.evaluate",
        "jaxae.classifier",
        "jaxae.report",
        "jaxae",
    },
]


def _module(path: pathlib.Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> jaxae modules it imports, anywhere in the file (function-local too)."""
    graph = {}
    for path in PKG.rglob("*.py"):
        name, deps = _module(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "jaxae":  # from jaxae import data -> jaxae.data
                    deps |= {f"jaxae.{a.name}" for a in node.names}
                elif node.module.startswith("jaxae."):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("jaxae.")}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                return stack[stack.index(d) :] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_flow_down_the_layers():
    layer = {m: i for i, mods in enumerate(LAYERS) for m in mods}
    graph = import_graph()
    assert set(graph) == set(layer), "a new module: add it to LAYERS"
    upward = [f"{m} -> {d}" for m, ds in graph.items() for d in ds if layer[d] > layer[m]]
    assert not upward, upward


def test_no_library_module_imports_argparse():
    for path in PKG.rglob("*.py"):
        if "cli" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "argparse" not in names, path


HELP = """
import sys
from experiments.latent_sweep import main as sweep_main
from jaxae.cli import classifier, evaluate, sample, train
for f in (train.main, sample.main, evaluate.main, classifier.main, sweep_main):
    try:
        f(["--help"])
    except SystemExit:
        pass
assert not [m for m in sys.modules if m == "jax" or m.startswith("jax.")], "JAX imported"
"""


def test_help_without_jax_shows_defaults():
    p = subprocess.run(
        [sys.executable, "-c", HELP], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "(default: 10)" in p.stdout  # --epochs, from TrainConfig
    assert "(default: 128)" in p.stdout and "(default: 0.001)" in p.stdout
    assert "(default: [2, 4, 8, 16, 32, 64])" in p.stdout  # the latent sweep's axis


def test_console_scripts_answer_help_under_their_own_name():
    import shutil
    import tomllib

    toml = (pathlib.Path(ROOT) / "pyproject.toml").read_text()
    scripts = tomllib.loads(toml)["project"]["scripts"]
    assert {"jaxae-train", "jaxae-sample", "jaxae-evaluate", "jaxae-latent-sweep"} <= set(scripts)
    bindir = pathlib.Path(sys.executable).parent
    for name in scripts:
        exe = shutil.which(name, path=str(bindir))
        assert exe, f"{name} is not installed beside {sys.executable} (pip install -e .)"
        p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr[-1000:]
        assert p.stdout.startswith(f"usage: {name} "), p.stdout[:200]


def test_resume_knows_a_command_by_any_of_its_names():
    from jaxae.cli import command

    for argv0 in ("/v/jaxae/train.py", "python -m jaxae.train", "/v/bin/jaxae-train"):
        assert command(argv0.split()[-1]) == "train"
    assert command("/v/bin/jaxae-latent-sweep") == command("experiments/latent_sweep.py")
    assert command("jaxae-sample") != command("jaxae-train")


# --- the likelihood registry -------------------------------------------------------------


def test_unknown_likelihood_is_an_error_never_a_fallback():
    with pytest.raises(likelihoods.UnknownLikelihood, match="must be one of"):
        likelihoods.get("laplace")
    out = {"logits": jnp.zeros((1, 4)), "mean": jnp.zeros((1, 2)), "logvar": jnp.zeros((1, 2))}
    with pytest.raises(likelihoods.UnknownLikelihood):
        losses.elbo_loss(out, jnp.zeros((1, 4)), beta=1.0, likelihood="laplace")
    with pytest.raises(ConfigError, match="likelihood"):
        ModelConfig(likelihood="laplace")


def test_a_registered_likelihood_reaches_config_and_loss(monkeypatch):
    half = dataclasses.replace(
        likelihoods.LIKELIHOODS["gaussian"],
        name="half",
        nll=lambda logits, x: 0.5 * likelihoods.squared_error(logits, x),
    )
    monkeypatch.setitem(likelihoods.LIKELIHOODS, "half", half)
    ModelConfig(likelihood="half")  # accepted by validation, read from the same dict
    logits, x = jnp.array([[0.0, 2.0]]), jnp.array([[1.0, 0.0]])
    out = {"logits": logits, "mean": jnp.zeros((1, 2))}
    loss, aux = losses.elbo_loss(out, x, beta=1.0, likelihood="half")
    want = 0.5 * ((0.5 - 1.0) ** 2 + (1 / (1 + np.exp(-2.0))) ** 2)
    np.testing.assert_allclose(aux["recon"], [want], rtol=1e-6)


# --- sweep axes -------------------------------------------------------------------------------


def test_group_key_is_the_structure():
    a = tiny_model(latent=2, beta=1.0)
    assert structure(a) == structure(tiny_model(latent=8, beta=4.0))  # padded / hyper axes
    assert structure(a) != structure(tiny_model(hidden=(16,)))
    members = [Member(tiny_model(latent=k), 0) for k in (2, 8)]
    members += [Member(tiny_model(latent=3, hidden=(16,)), 0)]
    members += [Member(tiny_model(kind="ae", likelihood="gaussian"), 0)]
    groups = group_members(members)
    assert [g.index for g in groups] == [(0, 1), (2,), (3,)]
    assert groups[0].cfg.latent == 8 and groups[1].cfg.hidden == (16,)


def test_grid_names_and_collapsed_axes():
    members = grid(
        ModelConfig(hidden=(8,)), {"kind": ["vae", "ae"], "latent": [2], "beta": [1.0, 4.0]}, 2
    )
    names = [m.name for m in members]
    assert names == [
        "vae,latent=2,beta=1,seed=0",
        "vae,latent=2,beta=1,seed=1",
        "vae,latent=2,beta=4,seed=0",
        "vae,latent=2,beta=4,seed=1",
        "ae,latent=2,beta=1,seed=0",  # an AE has no beta: the axis collapses
        "ae,latent=2,beta=1,seed=1",
    ]
    assert [m.model.likelihood for m in members] == ["bernoulli"] * 4 + ["gaussian"] * 2
    assert list(members[0].axes()) == [a.name for a in AXES]


# --- the loop on in-memory arrays, and a uniform restored run -----------------------------


def test_run_trains_on_in_memory_arrays_and_loads_uniformly(tmp_path):
    from jaxae.config import SweepConfig
    from jaxae.restore import load
    from jaxae.runner import fit, fit_sweep

    rng = np.random.default_rng(0)
    train_x = (rng.random((256, 784)) < 0.2).astype(np.uint8) * 255
    test_x = (rng.random((100, 784)) < 0.2).astype(np.uint8) * 255
    tcfg = tiny_train(dataset="not-a-dataset", train_size=None, epochs=1)
    kw = {"models_dir": tmp_path / "m", "runs_dir": tmp_path / "r", "progress": False}
    res = fit(tiny_model(), tcfg, "one", data=(train_x, test_x), **kw)
    assert res["steps"] == 2 and np.isfinite(res["test"]["loss"][0])
    sweep = SweepConfig((Member(tiny_model(), 0), Member(tiny_model(latent=4), 1)), tcfg)
    res2, _ = fit_sweep(sweep, "two", data=(train_x, test_x), **kw)
    assert len(res2["test"]["loss"]) == 2
    single, both = load(tmp_path / "m" / "one"), load(tmp_path / "m" / "two")
    assert len(single.members) == 1 and len(both.members) == 2  # one layout for both
    assert [m.name for m in single.members] == ["vae,latent=2,beta=1,seed=0"]
    assert [len(g.index) for g in single.groups] == [1]
    assert both.params(1)["params"]["encoder"]["mean"]["kernel"].shape == (16, 4)


def test_loaded_members_prepare_inputs_as_the_loop_evaluated(tmp_path, data_dir):
    from jaxae.config import SweepConfig
    from jaxae.restore import load
    from jaxae.runner import fit_sweep

    members = (Member(tiny_model(), 0), Member(tiny_model(kind="ae", likelihood="gaussian"), 0))
    sweep = SweepConfig(members, tiny_train(epochs=1))
    kw = {"models_dir": tmp_path / "m", "runs_dir": tmp_path / "r", "progress": False}
    res, _ = fit_sweep(sweep, "s", **kw)
    run = load(tmp_path / "m" / "s")
    x, xt_vae, labels = run.test_set(0)
    _, xt_ae, _ = run.test_set(1)
    assert set(np.unique(xt_vae)) == {0.0, 1.0}  # binarized, with the run's test key
    np.testing.assert_array_equal(xt_ae, x)  # squared error reads the grey pixels
    assert labels.shape == (10000,)
    # the reconstruction the loop measured, recomputed through the member view
    for i in (0, 1):
        xhat = np.asarray(run.reconstruct(i, run.test_set(i)[1])).reshape(x.shape)
        mse = float(np.square(xhat - x).mean())
        np.testing.assert_allclose(mse, res["test"]["mse"][i], rtol=1e-4)


FIGURES_KEEP_BACKEND = """
import sys
import matplotlib
matplotlib.use("svg")  # a user's (or a notebook's) choice
import numpy as np
from jaxae import plots
rows = [{"kind": k, "latent": z, "test_loss": 1.0, "test_recon": 1.0, "test_kl": 1.0,
         "test_mse": 0.1, "pca_mse": 0.2, "active_units": 1, "beta": 1.0}
        for k in ("ae", "vae") for z in (2, 4)]
plots.latent_curves(rows, sys.argv[1] + "/curves.png")
plots.sheet(["a", "b"], [np.zeros((8, 8, 1))] * 2, sys.argv[1] + "/sheet.png")
plots.save_png(sys.argv[1] + "/grid.png", np.zeros((8, 8, 1)))
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""


def test_figures_leave_the_matplotlib_backend_alone(tmp_path):
    p = subprocess.run(
        [sys.executable, "-c", FIGURES_KEEP_BACKEND, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    for name in ("curves.png", "sheet.png", "grid.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
