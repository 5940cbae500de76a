"""Small configs shared by the tests: tiny models, a slice of MNIST, few steps."""

import os
import subprocess
import sys

from jaxae.config import ModelConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = (32, 16)


def tiny_model(**kw) -> ModelConfig:
    return ModelConfig(**{"kind": "vae", "hidden": HIDDEN, "latent": 2, **kw})


def tiny_train(**kw) -> TrainConfig:
    # 1280 examples at batch 128: 10 steps per epoch, 2 chunks of 5
    return TrainConfig(**{"epochs": 2, "train_size": 1280, "chunk": 5, **kw})


def run_py(*args, env=None, timeout=300, cwd=None):
    """Run ``python ARGS`` in a subprocess; returns CompletedProcess with text output."""
    path = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    e = {**os.environ, "PYTHONPATH": path, **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        cwd=cwd or ROOT,
    )


# Runs a list of commands in one process (``run_plan``); argv[1]: JSON plan, argv[2]: JSON
# results. A step is {"cli": [module, *args]} (``python -m`` through runpy, stdout and
# stderr captured at the file-descriptor level, an escaping exception printed as
# ``python -m`` would) or {"load": run folder, "results": results.json} (``jaxae.load``
# checks); "env" and "cwd" apply to that step only.
ONE_PROCESS = r"""
import json, os, runpy, sys, tempfile, time, traceback

def capture(fn):
    outs = []
    saved = (os.dup(1), os.dup(2))
    files = [tempfile.TemporaryFile(mode="w+b") for _ in range(2)]
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(files[0].fileno(), 1); os.dup2(files[1].fileno(), 2)
    try:
        try:
            rc = fn()
        except SystemExit as e:
            code = e.code
            if code is None:
                rc = 0
            elif isinstance(code, int):
                rc = code
            else:
                print(code, file=sys.stderr)
                rc = 1
        except BaseException:
            traceback.print_exc()
            rc = 1
        sys.stdout.flush(); sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        os.close(saved[0]); os.close(saved[1])
    for f in files:
        f.seek(0)
        outs.append(f.read().decode("utf-8", "replace"))
        f.close()
    return rc, outs[0], outs[1]

def cli(argv):
    def go():
        sys.argv = [argv[0], *argv[1:]]
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        return 0
    return go

def load_checks(path, results):
    def go():
        import numpy as np
        import jaxae
        run = jaxae.load(path)
        n = len(run.members)
        metrics = run.test_metrics()
        for key, vals in metrics.items():
            assert len(vals) == n, (key, len(vals), n)
            assert np.all(np.isfinite(vals)), (key, vals)
        if results and os.path.exists(results):
            doc = json.load(open(results))
            if isinstance(doc["members"][0], dict):  # a sweep
                want = [m["test_loss"] for m in doc["members"]]
            else:  # a single model
                want = doc["test"]["loss"]
            np.testing.assert_allclose(metrics["loss"], want, rtol=1e-3)
        covered = sorted(i for g in run.groups for i in g.index)
        assert covered == list(range(n)), covered
        for i, m in enumerate(run.members):
            run.params(i)
            _, xt, _ = run.test_set(i, count=8)
            z = np.asarray(run.encode(i, xt))
            assert z.shape == (8, m.model.latent), (m.name, z.shape)
            x = np.asarray(run.decode(i, z))
            r = np.asarray(run.reconstruct(i, xt))
            assert x.shape == r.shape == (8, *m.model.image_shape), (x.shape, r.shape)
            assert np.all(np.isfinite(r)), m.name
        print(f"load ok: {n} members, {len(run.groups)} groups, step {run.step}")
        return 0
    return go

plan_path, out_path = sys.argv[1:3]  # each command replaces sys.argv
plan = json.load(open(plan_path))
out = []
home = os.getcwd()
for step in plan:
    fn = cli(step["cli"]) if "cli" in step else load_checks(step["load"], step.get("results"))
    env = dict(os.environ)
    os.environ.update(step.get("env", {}))
    os.chdir(step.get("cwd", home))
    if "env" in step:  # the data search reads it: no arrays of another data folder
        from jaxae.data import clear_cache
        clear_cache()
    t = time.perf_counter()
    rc, so, se = capture(fn)
    secs = time.perf_counter() - t
    os.chdir(home)
    os.environ.clear()
    os.environ.update(env)
    if "env" in step:
        clear_cache()
    out.append({**step, "rc": rc, "stdout": so, "stderr": se, "secs": secs})
    json.dump(out, open(out_path, "w"))
"""


def run_plan(plan: list[dict], tmp_path, env=None, timeout=400):
    """Run ``plan``'s commands one after the other in one subprocess: JAX starts once.

    Returns:
        (the subprocess's CompletedProcess, one dict per finished step: the step with
        ``rc``, ``stdout``, ``stderr`` and ``secs``).
    """
    import json

    plan_file, res_file = tmp_path / "plan.json", tmp_path / "plan-results.json"
    plan_file.write_text(json.dumps(plan))
    path = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    p = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS, str(plan_file), str(res_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
    )
    return p, json.loads(res_file.read_text()) if res_file.exists() else []


def run_cli(*args, **kw):
    """Run ``python -m ARGS`` in a subprocess."""
    return run_py("-m", *args, **kw)


def embed(small, big):
    """``big`` (e.g. random params of a wider model) with ``small`` written into the leading
    corner of every leaf: a padded model whose padding is NOT zero, so only the latent
    mask can make it behave like ``small``."""
    import jax

    return jax.tree.map(lambda b, s: b.at[tuple(slice(0, n) for n in s.shape)].set(s), big, small)


def one_model(cfg: ModelConfig, tcfg: TrainConfig):
    """One unstacked model's ``state``, ``hyper`` and ``step`` (what a sweep stacks and
    vmaps), from the library's pieces and the seed ``tcfg.seed``: the benchmarks' own."""
    from benchmarks.run import one_model as build

    return build(cfg, tcfg)


def only_member(state):
    """The state of the one member of a one-model Program (one group of one)."""
    import jax

    (group,) = state
    return jax.tree.map(lambda a: a[0], group)


def trained(prog, tcfg, name: str, **kw):
    """Train ``prog`` (``jaxae.runner.train``); returns (result, the Program holding the
    trained state)."""
    from jaxae.runner import train

    res, state = train(prog, tcfg, name, **kw)
    return res, prog.with_state(state)
