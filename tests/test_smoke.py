"""Smoke matrix, one device: short real runs through the command line, then every command
that reads a run (``jaxae.evaluate``, each ``jaxae.sample --mode``, ``jaxae.load``).

Every command of every cell must exit 0 and print its table, or refuse in ONE line with a
non-zero exit; a traceback anywhere fails the cell. The axes are covered pairwise by a few
sweeps that each span several axes at once (a full product would take hours on CPU):

| cell          | command      | kinds  | latents | arch   | other axes                      |
|---------------|--------------|--------|---------|--------|---------------------------------|
| mix           | latent_sweep | ae+vae | 1, 2    | mlp    | --warmups 0 4, --lrs 1e-3 3e-3  |
|               |              |        |         |        | (12 members, 2 groups),         |
|               |              |        |         |        | --ae-likelihood bernoulli,      |
|               |              |        |         |        | --no-binarize, sample scores    |
|               |              |        |         |        | (the AE mixture fit); progress  |
|               |              |        |         |        | lines without a terminal        |
| single_ae1_conv| jaxae.train | ae     | 1       | conv   | modes that need a VAE refuse    |
| funnel_resume | latent_sweep | vae    | 1, 2    | funnel | --vae-likelihood gaussian,      |
|               |              |        |         |        | --lr-schedule cosine; SIGTERM   |
|               |              |        |         |        | mid-epoch, --resume, new chunk  |

Why these: every value of every axis appears at least once and most pairs meet in some
cell (kind x latent, kind x lr/warm-up axis, likelihood x binarization, scores x both
kinds, schedule x resume, single model x each kind); the costly ones (conv, a funnel,
a stop and resume) are in one cell each. With the device file: kinds {vae, ae, both} x
latents {1, 2, 64} x devices {1, 3, 8, 2 processes x 2}.

Device counts (3 and 8 simulated devices, 2 processes x 2 devices) are in
``tests/test_smoke_devices.py``, so ``--dist loadfile`` runs the two files on two workers.

After training, one subprocess (``helpers.run_plan``) runs the reading commands of a cell one after
the other through their real entry points (``runpy`` of ``python -m jaxae.evaluate`` /
``jaxae.sample`` with its own argv, stdout and stderr captured at the file-descriptor
level), then the library view ``jaxae.load(path)``: ``test_metrics()`` against the
training run's results.json, ``groups``, ``params(i)``, ``encode``/``decode``/
``reconstruct`` of every member. One process per cell instead of one per command saves
JAX's start-up and re-compilation ~20 times per cell; an exception escaping a command is
printed as the traceback ``python -m`` would print.

Sample modes: on a sweep, every mode without ``--member`` (all members side by side) and
with ``--member`` for one member of each (kind, latent, arch); a mode a member cannot do
(``manifold`` of an AE; a 1-D latent's manifold/scatter may refuse too) must refuse in one
line, the rest must work.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT, run_cli, run_plan

SMALL = ["--hidden", "16", "--epochs", "1", "--train-size", "256", "--batch-size", "64"]
SMALL += ["--no-progress"]
MODES = ("prior", "recon", "interpolate", "manifold", "traverse", "scatter")
TIMEOUT = 400


def env_for(devices: int | None = None) -> dict:
    env = {"PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def show(argv, rc, out, err, n=1500) -> str:
    return f"$ python -m {' '.join(map(str, argv))}\nexit {rc}\n{out[-n:]}\n{err[-n:]}"


def refusal_problem(rc, out, err) -> str | None:
    """None when the output is a one-line refusal; else what is wrong."""
    # gloo's own connection notices are not the command's output
    text = "\n".join(ln for ln in (out + err).splitlines() if not ln.startswith("[Gloo]"))
    text = text.strip()
    if "Traceback" in out + err:
        return "traceback"
    if rc == 0:
        return "exit 0 where a refusal was expected"
    if len(text.splitlines()) != 1:
        return "refusal is not one line"
    return None


class Cell:
    """Collects every problem of a cell, so one run reports all of them at once."""

    def __init__(self, name):
        self.name, self.problems = name, []

    def fail(self, what, argv, rc, out, err):
        self.problems.append(f"[{self.name}] {what}\n{show(argv, rc, out, err)}")

    def check_ok(self, argv, rc, out, err, expect=()):
        if "Traceback" in out + err:
            self.fail("traceback", argv, rc, out, err)
        elif rc != 0:
            self.fail(f"exit {rc}", argv, rc, out, err)
        else:
            missing = [e for e in expect if e not in out]
            if missing:
                self.fail(f"output lacks {missing}", argv, rc, out, err)

    def check_either(self, argv, rc, out, err):
        """exit 0, or a one-line refusal."""
        if rc == 0 and "Traceback" not in out + err:
            return
        problem = refusal_problem(rc, out, err)
        if problem:
            self.fail(problem, argv, rc, out, err)

    def check_refused(self, argv, rc, out, err):
        problem = refusal_problem(rc, out, err)
        if problem:
            self.fail(problem, argv, rc, out, err)

    def done(self):
        assert not self.problems, "\n\n".join(self.problems)


def train(cell, argv, devices=None, expect=()):
    p = run_cli(*argv, env=env_for(devices), timeout=TIMEOUT)
    cell.check_ok(argv, p.returncode, p.stdout, p.stderr, expect)
    return p


def members_of(ckpt) -> list[dict]:
    """name, kind and latent of each member, from the run's config.json."""
    doc = json.loads((ckpt / "config.json").read_text())
    models = (
        [doc["model"]]
        if doc.get("type") == "model"
        else [m["model"] for m in doc["sweep"]["members"]]
    )
    return [{"name": n, **m} for n, m in zip(doc["members"], models, strict=True)]


def follow_ups(
    cell,
    ckpt,
    tmp_path,
    *,
    sweep,
    classifier=None,
    devices=None,
    quality=0,
    modes=MODES,
    evaluate=True,
):
    """evaluate, the sample modes (all members and one alone), jaxae.load checks; a cell
    whose axes the others already read back runs fewer (``modes``, ``evaluate``)."""
    kinds = members_of(ckpt)
    names = [m["name"] for m in kinds]
    ckpt = str(ckpt)
    plan = []
    ev = ["jaxae.evaluate", "--ckpt", ckpt, "--k", "4", "--batch", "1000"]
    ev += ["--quality-samples", str(quality)]
    ev += ["--no-progress"] + (["--classifier", str(classifier)] if classifier else [])
    if evaluate:
        plan.append({"cli": ev, "expect": names, "rule": "ok"})
    outdir = tmp_path / "png"
    outdir.mkdir(exist_ok=True)
    # the sheet of all members draws each of them; --member once more for the last one
    # (by name), which takes the single-panel path
    picks = [None, len(kinds) - 1] if sweep else [None]
    for mode in modes:
        for i in picks:
            argv = ["jaxae.sample", "--ckpt", ckpt, "--mode", mode, "--n", "18"]
            tag = "all" if i is None else str(i)
            argv += ["--out", str(outdir / f"{mode}-{tag}.png")]
            members = kinds if i is None else [kinds[i]]
            if i is not None:
                argv += ["--member", names[i]]
            is_ae = [m["kind"] == "ae" for m in members]
            one_d = [m["latent"] == 1 for m in members]
            if mode == "manifold" and all(is_ae):
                rule = "refuse"
            elif mode == "manifold" and any(is_ae):
                rule = "either"  # a sheet of all members: refusing for the AE ones is fine
            elif mode in ("manifold", "scatter") and any(one_d):
                rule = "either"
            else:
                rule = "ok"
            plan.append({"cli": argv, "rule": rule, "png": argv[argv.index("--out") + 1]})
    plan.append({"load": ckpt, "results": f"{ckpt}/results.json", "rule": "ok"})
    p, done = run_plan(plan, tmp_path, env=env_for(devices), timeout=TIMEOUT)
    if p.returncode != 0 or len(done) != len(plan):
        cell.fail("follow-up process died", ["<follow-ups>"], p.returncode, p.stdout, p.stderr)
    for r in done:
        argv = r["cli"] if "cli" in r else ["jaxae.load", r["load"]]
        if os.environ.get("SMOKE_TIMES"):
            print(f"{r['secs']:7.1f} s  {' '.join(map(str, argv))[:150]}")
        args = (argv, r["rc"], r["stdout"], r["stderr"])
        if r["rule"] == "ok":
            cell.check_ok(*args, r.get("expect", ()))
            if "png" in r and r["rc"] == 0 and not os.path.exists(r["png"]):
                cell.fail("no PNG written", *args)
        elif r["rule"] == "refuse":
            cell.check_refused(*args)
        else:
            cell.check_either(*args)
    return done


def sweep_argv(tmp_path, name, *axes):
    out = ["--models-dir", str(tmp_path / "m"), "--runs-dir", str(tmp_path / "r")]
    return ["experiments.latent_sweep", "--name", name, "--seeds", "1", *SMALL, *out, *axes]


SWEEPS = {
    # both kinds x latents 1, 2 x warm-up axis x learning-rate axis (12 members in two
    # groups), Bernoulli AEs on grey pixels, sample scores with the AE mixture fit
    "mix": [
        "--kinds", "ae", "vae", "--latents", "1", "2", "--warmups", "0", "4",
        "--lrs", "1e-3", "3e-3", "--ae-likelihood", "bernoulli", "--no-binarize",
        "--quality-samples", "200",
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_sweep_cell(name, tmp_path, classifier_dir):
    from jaxae import quality

    cell = Cell(name)
    clf = quality.default_path(classifier_dir, "mnist")
    argv = sweep_argv(tmp_path, name, *SWEEPS[name], "--classifier", str(clf))
    p = train(cell, argv, expect=["test  ", "mean ± std"])
    assert "epoch 1/1" in p.stderr, p.stderr[-2000:]  # a progress line without a terminal
    ckpt = tmp_path / "m" / name
    if p.returncode == 0 or (ckpt / "results.json").exists():
        follow_ups(cell, ckpt, tmp_path, sweep=True, classifier=clf, quality=200)
    cell.done()


def _single(tmp_path, *args):
    out = ["--models-dir", str(tmp_path / "m"), "--runs-dir", str(tmp_path / "r")]
    return ["jaxae.train", "--run", "one", *SMALL, *out, *args]


# a latent-1 conv AE (a single latent-2 VAE is the hosts cell of the device file)
SINGLES = {
    "ae1_conv": ["--kind", "ae", "--latent", "1", "--arch", "conv"],
}


@pytest.mark.parametrize("name", sorted(SINGLES))
def test_single_model_cell(name, tmp_path):
    cell = Cell(f"single_{name}")
    p = train(cell, _single(tmp_path, *SINGLES[name]), expect=["test  "])
    if p.returncode == 0:
        follow_ups(cell, tmp_path / "m" / "one", tmp_path, sweep=False)
    cell.done()


def _read_until(proc, pattern_ok, deadline):
    """Read proc's stderr (unbuffered chunks, tqdm's carriage returns) until pattern_ok."""
    buf = []

    def pump():
        while True:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                return
            buf.append(chunk.decode("utf-8", "replace"))

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    while time.time() < deadline and proc.poll() is None:
        if pattern_ok("".join(buf)):
            return True, buf, t
        time.sleep(0.02)
    return False, buf, t


def test_funnel_sweep_resumes_after_a_stop_in_the_middle_of_an_epoch(tmp_path):
    """A funnel of VAEs (latents 1 and 2, each its own group) with a Gaussian likelihood
    and the cosine schedule: SIGTERM as soon as the bar shows a step (--chunk 1, 64
    steps an epoch) saves mid-epoch and exits 143; --resume with another --chunk
    finishes the epoch, and every reading command works on the result."""
    cell = Cell("funnel_resume")
    axes = ["--kinds", "vae", "--funnel", "32", "16", "2", "1", "--latents", "1", "2"]
    axes += ["--vae-likelihood", "gaussian", "--lr-schedule", "cosine"]
    axes += ["--quality-samples", "0", "--train-size", "2048", "--batch-size", "32"]
    argv = sweep_argv(tmp_path, "res", *axes)
    argv = [a for a in argv if a != "--no-progress"] + ["--progress", "--chunk", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env={**os.environ, **env_for()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def stepped(text):  # tqdm printed a count >= 1, e.g. " 7/64 "
        return any(int(n) > 0 for n in re.findall(r"\s(\d+)/64\b", text))

    seen, buf, pump = _read_until(proc, stepped, time.time() + TIMEOUT)
    if seen:
        proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read().decode()
    proc.wait(timeout=TIMEOUT)
    pump.join(timeout=10)
    err = "".join(buf)
    assert seen, show(argv, proc.returncode, out, err)
    if "Traceback" in out + err or proc.returncode != 128 + signal.SIGTERM:
        cell.fail("stop", argv, proc.returncode, out, err)
    cell.done()
    stopped = int(re.search(r"at step (\d+)", err).group(1))
    assert 0 < stopped < 64, err[-1000:]  # in the middle of the first epoch
    resume = argv[: argv.index("--seeds")] + ["--resume", "--chunk", "50", "--no-progress"]
    resume += ["--models-dir", str(tmp_path / "m"), "--runs-dir", str(tmp_path / "r")]
    p = train(cell, resume, expect=["test  ", "mean ± std"])
    if p.returncode == 0:
        doc = json.loads((tmp_path / "m" / "res" / "results.json").read_text())
        assert doc["steps"] == 64, doc["steps"]
        # the funnel's own paths: latent 1 and 2 in separate groups, each read back
        follow_ups(cell, tmp_path / "m" / "res", tmp_path, sweep=True, modes=("manifold",))
    cell.done()
