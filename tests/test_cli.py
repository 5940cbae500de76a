"""Command-line behaviour: help, sample modes, and the bad-input table (see README)."""

import gzip
import json
import shutil

import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest
import scipy.special
from helpers import run_cli, run_plan, run_py

from jaxae.models import Model
from jaxae.restore import load

TRAIN = ("jaxae.train", "--hidden", "16", "--epochs", "1", "--train-size", "640", "--no-progress")


def _snapshot(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A tiny trained VAE (latent 2) and AE, and a 2-member latent sweep."""
    root = tmp_path_factory.mktemp("cli")
    out = {}
    for name, extra in (("vae", ["--latent", "2"]), ("ae", ["--kind", "ae", "--latent", "3"])):
        p = run_cli(
            *TRAIN,
            *extra,
            "--run",
            name,
            "--models-dir",
            str(root / "models"),
            "--runs-dir",
            str(root / "runs"),
            cwd=root,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        assert "examples/s" in p.stdout and "compile" in p.stdout
        out[name] = root / "models" / name
    p = run_cli(
        "experiments.latent_sweep",
        "--kinds",
        "vae",
        "--latents",
        "2",
        "4",
        "--seeds",
        "1",
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--train-size",
        "640",
        "--no-progress",
        "--quality-samples",
        "0",
        "--models-dir",
        str(root / "models"),
        "--runs-dir",
        str(root / "runs"),
        cwd=root,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    out["sweep"] = root / "models" / "latent_sweep"
    out["root"] = root
    return out


@pytest.mark.parametrize(
    "mode,n,shape",
    [
        ("prior", 16, (4 * 29 + 1) * 3),
        ("recon", 8, (4 * 29 + 1) * 3),
        ("interpolate", 20, (2 * 29 + 1) * 3),
        ("manifold", 25, (5 * 29 + 1) * 3),
        ("traverse", 18, (2 * 29 + 1) * 3),
    ],
)
def test_sample_modes_write_png_of_expected_size(ckpts, tmp_path, mode, n, shape):
    out = tmp_path / f"{mode}.png"
    p = run_cli(
        "jaxae.sample",
        "--ckpt",
        str(ckpts["vae"]),
        "--mode",
        mode,
        "--n",
        str(n),
        "--out",
        str(out),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert mpimg.imread(out).shape[0] == shape


def test_an_autoencoder_samples_from_its_code_density(ckpts, tmp_path):
    # the command: an AE's prior samples come from the mixture fitted on its codes
    out = tmp_path / "ae.png"
    args = ("--ckpt", str(ckpts["ae"]), "--n", "16", "--out", str(out))
    p = run_cli("jaxae.sample", *args)
    assert p.returncode == 0, p.stderr[-2000:]
    assert mpimg.imread(out).shape[0] == (4 * 29 + 1) * 3
    # the library: the decoded z are the mixture's samples, or N(0, I) ones when asked
    from jaxae import generate
    from jaxae.restore import load

    run = load(ckpts["ae"])
    gmm = generate.code_density(run, 0)
    images, _ = generate.prior(run, 0, n=5, seed=7)
    z = gmm.sample(5, 7).astype(np.float32)
    np.testing.assert_allclose(images, run.decode(0, z), atol=1e-6)
    normal, _ = generate.prior(run, 0, n=5, seed=7, density="normal")
    assert not np.allclose(normal, images)


def test_traverse_sweeps_one_dim_per_row_highest_kl_first(ckpts):
    from jaxae import generate
    from jaxae.restore import load

    run = load(ckpts["vae"])
    order, score = generate.dimension_order(run, 0)
    _, xt, _ = run.test_set(0)
    mean, logvar = (np.asarray(a, np.float64) for a in run.posterior(0, xt[:2000]))
    kl = (0.5 * (np.exp(logvar) + mean**2 - 1 - logvar)).mean(0)  # per dim, by hand
    np.testing.assert_allclose(score, np.sort(kl)[::-1], rtol=1e-5)
    assert list(order) == list(np.argsort(-kl))
    images, cols = generate.traverse(run, 0, n=18, seed=3)
    assert cols == 9 and images.shape[0] == 18
    mu = np.asarray(run.encode(0, xt[generate._pick(3, len(xt), 1)]))[0]
    for r, d in enumerate(order[:2]):
        z = np.tile(mu, (9, 1))
        z[:, d] = np.linspace(-3, 3, 9)
        np.testing.assert_allclose(images[9 * r : 9 * r + 9], run.decode(0, z), atol=1e-6)


def test_sample_is_deterministic(ckpts, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for path in (a, b):
        p = run_cli("jaxae.sample", "--ckpt", str(ckpts["vae"]), "--seed", "3", "--out", str(path))
        assert p.returncode == 0, p.stderr
    assert a.read_bytes() == b.read_bytes()  # two processes draw the same sheet
    # a sweep's members side by side and one member alone: every smoke cell of
    # tests/test_smoke.py samples both ways


def test_evaluate_bounds_match_numpy(ckpts, tmp_path):
    p = run_cli(
        "jaxae.evaluate",
        "--ckpt",
        str(ckpts["sweep"]),
        "--k",
        "8",
        "--chunk",
        "4",
        "--batch",
        "1000",
        "--quality-samples",
        "1000",
        "--no-progress",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert (ckpts["sweep"] / "eval.json").exists() and "NLL IW" in p.stdout
    assert "FD GMM" in p.stdout
    # the bounds against an independent numpy estimate from other noise (k = 8 samples
    # of every test digit): equal up to Monte Carlo error
    run = load(ckpts["sweep"])
    for m in json.loads((ckpts["sweep"] / "eval.json").read_text())["members"]:
        want, se = _numpy_bounds(run, run.member_index(m["member"]), k=8)
        for key in ("nll_iw", "neg_elbo_k"):
            assert abs(m[key] - want[key]) < 5 * se[key] + 1e-3, (key, m, want, se)


def _numpy_bounds(run, i, *, k):
    """-(1/N) sum_n log (1/k) sum_j w_nj (IW) and -mean log w (ELBO) of member i, with
    log w = log p(x|z) + log N(z; 0, I) - log N(z; mean, diag exp(logvar)), z from numpy's
    noise; also their standard errors. Bernoulli log p(x|z) = x l - log(1 + e^l)."""
    _, xt, _ = run.test_set(i)
    mean, logvar = (np.asarray(a, np.float64) for a in run.posterior(i, xt))
    eps = np.random.default_rng(7).standard_normal((k, *mean.shape))
    z = mean + np.exp(logvar / 2) * eps
    model = Model(run.members[i].model)
    dec = model.apply(
        run.params(i), jnp.asarray(z.reshape(-1, z.shape[-1]), jnp.float32), method=Model.decode
    )
    logits = np.asarray(dec, np.float64).reshape(k, len(xt), -1)
    log_lik = (xt * logits - np.logaddexp(0, logits)).sum(-1)
    log_prior = -0.5 * (z**2 + np.log(2 * np.pi)).sum(-1)
    log_q = -0.5 * (eps**2 + logvar + np.log(2 * np.pi)).sum(-1)
    log_w = log_lik + log_prior - log_q  # (k, N)
    iw = -(scipy.special.logsumexp(log_w, axis=0) - np.log(k))
    elbo = -log_w.mean(0)
    n = len(xt)
    # the CLI's estimate has the same noise as this one: its difference has sqrt 2 x the se
    se = {
        "nll_iw": np.sqrt(2) * iw.std() / np.sqrt(n),
        "neg_elbo_k": np.sqrt(2) * elbo.std() / np.sqrt(n),
    }
    return {"nll_iw": iw.mean(), "neg_elbo_k": elbo.mean()}, se


LOAD = """
import json, sys
from jaxae.restore import load
run = load(sys.argv[1])
print(json.dumps(run.test_metrics()))
"""


def test_checkpoint_reproduces_reported_test_loss_in_fresh_process(ckpts, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(LOAD)
    for name in ("vae", "ae", "sweep"):
        p = run_py(str(script), str(ckpts[name]))
        assert p.returncode == 0, p.stderr[-2000:]
        reported = json.loads((ckpts[name] / "results.json").read_text())
        got = json.loads(p.stdout.strip().splitlines()[-1])
        if name == "sweep":
            reported = {"loss": [m["test_loss"] for m in reported["members"]]}
        assert got["loss"] == reported["loss"] if name == "sweep" else got == reported["test"]


def test_help_is_fast_and_explains():
    for mod in (
        "jaxae.train",
        "jaxae.sample",
        "jaxae.evaluate",
        "jaxae.classifier",
        "experiments.latent_sweep",
        "experiments.beta_sweep",
    ):
        p = run_cli(mod, "--help", timeout=20)
        assert p.returncode == 0 and "usage:" in p.stdout and len(p.stdout) > 300


def _corrupt_data(tmp_path):
    d = tmp_path / "baddata" / "mnist"
    d.mkdir(parents=True)
    from conftest import _data_dir

    for f in (_data_dir() / "mnist").glob("*.gz"):
        shutil.copy(f, d / f.name)
    raw = bytearray(gzip.decompress((d / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] ^= 0xFF
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    return d.parent


def _flip_byte(ckpt, tmp_path):
    bad = tmp_path / "flipped"
    shutil.copytree(ckpt, bad)
    files = [p for p in (bad).rglob("*") if p.is_file() and "state" in p.parts]
    big = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 0xFF
    big.write_bytes(bytes(data))
    return bad


# (name, module and args, expected text in the error line); {vae}, {ae}, {sweep}, {tmp} are
# filled in. Each must fail with one line on stderr, a non-zero exit and no new files.
BAD = [
    ("unknown flag", [*TRAIN, "--bogus"], "unrecognized arguments"),
    ("zero latent size", [*TRAIN, "--latent", "0"], "positive integer"),
    ("negative latent size", [*TRAIN, "--latent", "-3"], "positive integer"),
    ("hidden width not positive", [*TRAIN, "--hidden", "8", "0"], "positive integer"),
    ("beta < 0", [*TRAIN, "--beta", "-1"], "must be >= 0"),
    ("zero epochs", [*TRAIN, "--epochs", "0"], "positive integer"),
    ("negative learning rate", [*TRAIN, "--lr", "-0.1"], "argument --lr: must be > 0"),
    ("NaN learning rate", [*TRAIN, "--lr", "nan"], "argument --lr: must be > 0, got nan"),
    ("unknown kind", [*TRAIN, "--kind", "gan"], "invalid choice"),
    ("batch larger than dataset", [*TRAIN, "--batch-size", "1000"], "larger than the dataset"),
    ("unknown dataset", [*TRAIN, "--dataset", "cifar99"], "unknown dataset"),
    ("missing data dir", [*TRAIN], "could not download"),
    ("corrupt IDX file", [*TRAIN], "sha256"),
    ("existing run", [*TRAIN, "--run", "vae", "--models-dir", "{models}"], "already exists"),
    ("empty sweep", ["experiments.latent_sweep", "--latents"], "expected at least one"),
    ("sweep latent 0", ["experiments.latent_sweep", "--latents", "0"], "positive integer"),
    ("sweep beta < 0", ["experiments.beta_sweep", "--betas", "-2"], "must be >= 0"),
    ("sweep zero seeds", ["experiments.beta_sweep", "--seeds", "0"], "positive integer"),
    ("missing checkpoint", ["jaxae.sample", "--ckpt", "{tmp}/nope"], "no checkpoint"),
    ("not a checkpoint", ["jaxae.sample", "--ckpt", "{tmp}"], "checkpoint"),
    (
        "unknown member name",
        ["jaxae.sample", "--ckpt", "{sweep}", "--member", "vae,latent=3"],
        "no member",
    ),
    (
        "member index out of range",
        ["jaxae.sample", "--ckpt", "{sweep}", "--member", "7"],
        "no member 7",
    ),
    ("manifold of an AE", ["jaxae.sample", "--ckpt", "{ae}", "--mode", "manifold"], "needs a VAE"),
    (
        "unknown sample mode",
        ["jaxae.sample", "--ckpt", "{vae}", "--mode", "dream"],
        "invalid choice",
    ),
    ("zero samples", ["jaxae.sample", "--ckpt", "{vae}", "--n", "0"], "positive integer"),
    (
        "unwritable output folder",
        ["jaxae.sample", "--ckpt", "{vae}", "--out", "/nonexistent/x.png"],
        "does not exist",
    ),
    ("flipped byte in checkpoint", ["jaxae.sample", "--ckpt", "{flipped}"], "corrupt"),
    ("evaluate: negative k", ["jaxae.evaluate", "--ckpt", "{vae}", "--k", "-1"], "must be >= 0"),
    ("evaluate: missing checkpoint", ["jaxae.evaluate", "--ckpt", "{tmp}/nope"], "no checkpoint"),
    (
        "evaluate: a VAE run as the classifier",
        ["jaxae.evaluate", "--ckpt", "{vae}", "--k", "0", "--classifier", "{ae}"],
        "is not a jaxae classifier",
    ),
    ("classifier: zero epochs", ["jaxae.classifier", "--epochs", "0"], "positive integer"),
    ("run name escapes", [*TRAIN, "--run", "../x"], "must be a plain folder name"),
    ("absolute run name", [*TRAIN, "--run", "/tmp/x"], "must be a plain folder name"),
    # --resume takes the omitted flags from the run's command line; the runner compares
    # the configs field by field and refuses a changed field
    (
        "resume with another batch size",
        [*TRAIN, "--run", "vae", "--models-dir", "{models}", "--resume", "--batch-size", "64"],
        "train.batch_size 64 differs from the run's 128",
    ),
    (
        "resume a sweep with other latents",
        ["experiments.latent_sweep", "--models-dir", "{models}", "--resume", "--latents", "2", "8"],
        "model.latent 8 differs from the run's 4",
    ),
]


@pytest.fixture(scope="module")
def refusals(ckpts, tmp_path_factory):
    """Every BAD command, run one after the other in one process (``helpers.run_plan``:
    JAX starts once), each in its own folder: (results by name, each case's folder and
    its files before, the trained runs' files before and after)."""
    root = tmp_path_factory.mktemp("bad")
    plan, folders = [], {}
    for i, (name, args, _) in enumerate(BAD):
        d = root / f"case{i}"
        (d / "work").mkdir(parents=True)
        env = {}
        if name == "missing data dir":
            env = {"JAXAE_DATA_DIR": str(d / "nodata"), "JAXAE_MNIST_MIRROR": "http://127.0.0.1:9/"}
        if name == "corrupt IDX file":
            env = {"JAXAE_DATA_DIR": str(_corrupt_data(d))}
        fill = {
            "vae": ckpts["vae"],
            "ae": ckpts["ae"],
            "sweep": ckpts["sweep"],
            "tmp": d,
            "models": ckpts["root"] / "models",
        }
        if "{flipped}" in args:
            fill["flipped"] = _flip_byte(ckpts["vae"], d)
        step = {"cli": [a.format(**fill) for a in args], "cwd": str(d / "work"), "name": name}
        if env:
            step["env"] = env
        plan.append(step)
        folders[name] = (d, _snapshot(d))
    before = _snapshot(ckpts["root"])
    p, done = run_plan(plan, root, timeout=600)
    assert len(done) == len(plan), p.stderr[-3000:]
    return {r["name"]: r for r in done}, folders, before, _snapshot(ckpts["root"])


@pytest.mark.parametrize("name,args,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_clear_line(refusals, name, args, expect):
    results, folders, before, after = refusals
    r = results[name]
    assert r["rc"] != 0
    lines = r["stderr"].strip().splitlines()
    assert len(lines) == 1, r["stderr"][-3000:]
    assert "Traceback" not in r["stderr"] and expect in lines[0], lines[0]
    folder, files = folders[name]
    assert _snapshot(folder) == files  # nothing written
    assert after == before  # no trained run touched (by any of the cases)


def test_resume_fills_the_omitted_flags_from_the_run_s_command_line(tmp_path):
    from jaxae.cli import train

    run = tmp_path / "m" / "r"
    run.mkdir(parents=True)
    saved = ["/v/bin/jaxae-train", "--run", "r", "--latent", "3", "--batch-size", "64"]
    saved += ["--no-binarize", "--models-dir", str(tmp_path / "m"), "--chunk", "7"]
    (run / "config.json").write_text(json.dumps({"argv": saved}))
    now = ["--run", "r", "--models-dir", str(tmp_path / "m"), "--resume", "--epochs", "3"]
    args = train.parser().parse_args([*now, "--lr", "0.01", "--no-progress"])
    # the run's flags where this command line has none
    assert args.latent == 3 and args.batch_size == 64 and args.chunk == 7
    assert train.train_config(args).binarize is False
    # this command line's flags on top, a config field too: the runner decides about it
    assert args.epochs == 3 and args.lr == 0.01 and args.resume and args.progress is False
    # no saved command line: the flags as given
    args = train.parser().parse_args(["--run", "other", "--resume", "--latent", "5"])
    assert args.latent == 5 and args.batch_size == 128


def test_beta_sweep_with_warmup_and_learning_rate_axes(tmp_path):
    p = run_cli(
        *("experiments.beta_sweep", "--betas", "4", "--warmups", "0", "5"),
        *("--lrs", "1e-3", "3e-3", "--latents", "2", "--seeds", "1", "--hidden", "16"),
        *("--epochs", "1", "--train-size", "640", "--no-progress", "--quality-samples", "300"),
        *("--models-dir", str(tmp_path / "m"), "--runs-dir", str(tmp_path / "r")),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    out = tmp_path / "m" / "beta_sweep"
    doc = json.loads((out / "results.json").read_text())
    names = [m["member"] for m in doc["members"]]
    assert len(names) == 4 and "vae,latent=2,beta=4,warmup=5,lr=0.003,seed=0" in names
    pairs = {(m["warmup"], m["lr"]) for m in doc["members"]}
    assert pairs == {(0, 0.001), (5, 0.001), (0, 0.003), (5, 0.003)}
    # members differ by their knobs: no two train the same way
    losses = [m["test_loss"] for m in doc["members"]]
    assert len(set(losses)) == 4
    assert mpimg.imread(out / "traversals.png").shape[0] > 100
    # the figure's fourth panel: the Fréchet distance of each member's samples
    assert all(m["frechet"] > 0 for m in doc["members"])
    assert mpimg.imread(out / "beta_sweep.png").shape[1] == 20 * 110


def test_compile_cache_reads_jax_s_own_variables_and_holds_its_size_bound(tmp_path):
    # the folder: $JAXAE_COMPILE_CACHE, else JAX's $JAX_COMPILATION_CACHE_DIR; the bound:
    # $JAXAE_COMPILE_CACHE_MAX_BYTES, else $JAX_COMPILATION_CACHE_MAX_SIZE. 30 programs of
    # about 3 kB each in a cache bounded at 30 kB: the least recently used ones go
    script = """
import json, os, pathlib, sys
from jaxae import cli
where = cli.default_compile_cache()
cli.use_compile_cache(where)
import jax, jax.numpy as jnp
for i in range(30):
    jax.jit(lambda x, i=i: jnp.sin(x) * i + jnp.cos(x) ** i)(jnp.ones(100 + i)).block_until_ready()
sizes = [p.stat().st_size for p in pathlib.Path(where).glob("*-cache")]
print(json.dumps({"where": where, "bound": cli.compile_cache_max_bytes(), "sizes": sizes}))
"""
    # an entry an unbounded cache wrote (no access-time file) must not stop the writes
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "jit_old-0123-cache").write_bytes(b"\0" * 100)
    env = {"JAXAE_COMPILE_CACHE": "", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")}
    env["JAX_COMPILATION_CACHE_MAX_SIZE"] = "30000"
    p = run_py("-W", "error::UserWarning", "-c", script, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["where"] == str(tmp_path / "jax") and out["bound"] == 30000
    assert 3 <= len(out["sizes"]) < 30 and sum(out["sizes"]) <= 30000
    env["JAXAE_COMPILE_CACHE"], env["JAXAE_COMPILE_CACHE_MAX_BYTES"] = str(tmp_path / "j"), "-1"
    p = run_py("-W", "error::UserWarning", "-c", script, env=env)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["where"] == str(tmp_path / "j") and len(out["sizes"]) >= 30  # no bound
