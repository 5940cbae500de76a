import json

import jax
import numpy as np
import pytest
from helpers import only_member, run_cli, run_py, tiny_model, tiny_train, trained

from jaxae import generate, quality
from jaxae import sweep as jsweep
from jaxae.config import ConfigError, Member, SweepConfig
from jaxae.restore import load
from jaxae.summary import member_dir


def _run(prog, tcfg, path, name="r"):
    """(result, the Program holding the trained state)."""
    return trained(prog, tcfg, name, models_dir=path / "m", runs_dir=path / "r", progress=False)


@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory):
    """A mixed sweep: VAE latents {2, 8} x betas {1, 4}, two seeds for one config, AEs
    (a second group in the same scanned step) and two IWAEs (a third group). Conv
    members are slow on XLA:CPU: their padding and mask are checked in test_models, their
    sweeps by the smoke matrix (test_smoke's ae1_conv, test_smoke_devices' dev3)."""
    members = [Member(tiny_model(latent=k, beta=b), 0) for k in (2, 8) for b in (1.0, 4.0)]
    members += [Member(tiny_model(latent=2, beta=1.0), 1)]
    members += [Member(tiny_model(kind="ae", likelihood="gaussian", latent=k), 0) for k in (3, 5)]
    # per-member training knobs in the MLP VAE group: KL warm-up, another learning rate
    members += [Member(tiny_model(latent=8, warmup=15), 0), Member(tiny_model(lr=3e-3), 0)]
    # IWAE members (3 samples of the bound): their own group, padded like the others
    members += [Member(tiny_model(latent=k, iw_k=3), 0) for k in (2, 8)]
    # a cosine schedule: every member's rate decays over the run, the padded copies' too
    sweep = SweepConfig(tuple(members), tiny_train(schedule="cosine"))
    prog = jsweep.sweep_program(sweep)
    res, prog = _run(prog, sweep.train, tmp_path_factory.mktemp("sweep"))
    return sweep, prog, res


def test_one_program_two_groups(trained_sweep):
    sweep, prog, res = trained_sweep
    assert len(prog.state) == 3  # MLP VAEs, MLP AEs and IWAEs, in one scanned step
    assert res["steps"] == 20 and len(res["test"]["loss"]) == len(sweep.members)


@pytest.mark.parametrize("i", range(11))
def test_member_matches_standalone_run(trained_sweep, tmp_path, i):
    sweep, prog, res = trained_sweep
    m = sweep.members[i]
    tcfg = tiny_train(seed=m.seed, schedule="cosine")
    alone_res, alone = _run(jsweep.single_program(m.model, tcfg), tcfg, tmp_path)
    got = jsweep.member_params(prog.state, sweep, i)
    want = only_member(alone.state)["params"]
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(alone_res["test"]["loss"][0], res["test"]["loss"][i], rtol=1e-4)


def test_initial_state_is_each_members_own_padded_and_in_order():
    """The vmapped initialiser against one eager init per member, zero-padded in numpy:
    latents interleaved (the parts are concatenated by size and put back in order),
    seeds repeated, and the per-member arrays against each member's own keys and mask."""
    from jaxae.config import HYPER
    from jaxae.models import latent_mask
    from jaxae.step import init_state, make_optimizer

    members = [Member(tiny_model(latent=k), s) for k, s in ((8, 0), (2, 1), (8, 2), (4, 0), (2, 0))]
    sweep = SweepConfig(tuple(members), tiny_train())
    prog = jsweep.sweep_program(sweep)
    (group,) = prog.init()
    (hyper,) = prog.hyper
    tx = make_optimizer(sweep.train)
    for i, m in enumerate(members):
        own = init_state(m.model, tx, jsweep.model_keys(m.seed)["init"])
        got = jax.tree.map(lambda a, i=i: np.asarray(a[i]), group)
        for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(got), strict=True):
            a = np.asarray(a)
            if a.shape != b.shape:
                a = np.pad(a, [(0, t - n) for n, t in zip(a.shape, b.shape, strict=True)])
            np.testing.assert_array_equal(b, a)
        keys = jsweep.model_keys(m.seed)
        own_h = {
            **{h: np.float32(jsweep._hyper_value(m.model, h, sweep.train)) for h in HYPER},
            "mask": latent_mask(m.model.latent, 8),
            "key": keys["train"],
            "eval_key": keys["eval"],
            "sample_key": keys["sample"],
        }
        for name, v in own_h.items():
            a, b = v, hyper[name][i]
            if name.endswith("key"):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_initialisation_holds_a_few_latent_sizes_rows_at_a_time(monkeypatch):
    # Each latent size's rows (jax arrays, numpy where padded) are written into the state;
    # rows still held once written would grow the memory with the member count. At each
    # write the bytes alive beyond the state are counted: jax's live arrays, and numpy's
    # allocations with tracemalloc (numpy's domain).
    import tracemalloc

    members = [Member(tiny_model(latent=k), 0) for k in range(1, 9)]  # eight parts of one row
    prog = jsweep.sweep_program(SweepConfig(tuple(members), tiny_train()))
    numpy_only = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    alive, write = [], jsweep._write_rows

    def live_bytes():
        traces = tracemalloc.take_snapshot().filter_traces(numpy_only).traces
        return sum(t.size for t in traces) + sum(a.nbytes for a in jax.live_arrays())

    def counted(*args):
        alive.append(live_bytes())
        return write(*args)

    monkeypatch.setattr(jsweep, "_write_rows", counted)
    tracemalloc.start()
    try:
        before = live_bytes()
        (group,) = prog.init()
    finally:
        tracemalloc.stop()
    state = sum(a.nbytes for a in jax.tree.leaves(group))
    params = sum(a.nbytes for a in jax.tree.leaves(group["params"]))
    extra = max(alive) - before - state
    assert len(alive) == 8
    assert extra < params / 2, f"{extra} bytes of rows alive for {params} of params"


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
import numpy as np
from helpers import tiny_model, tiny_train
from jaxae.config import Member, SweepConfig
from jaxae.runner import fit_sweep
from jaxae.summary import member_dir, read_scalars
members = [Member(tiny_model(), s) for s in range(3)]  # groups of 3, 8 and 18 members
members += [Member(tiny_model(kind="ae", likelihood="gaussian", latent=k), s)
            for k in (2, 3) for s in range(4)]
members += [Member(tiny_model(hidden=(16,), latent=k, beta=0.5), s)
            for k in (2, 3) for s in range(9)]
out, epochs, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
sweep = SweepConfig(tuple(members), tiny_train(epochs=epochs, batch_size=32, eval_batch=100))
rng = np.random.default_rng(0)  # small in-memory data: 8 steps per epoch, 100 test digits
data = rng.integers(0, 256, (256, 784), np.uint8), rng.integers(0, 256, (100, 784), np.uint8)
res, prog = fit_sweep(sweep, "s", models_dir=out + "/m", runs_dir=out + "/r", progress=False,
                      resume=resume, data=data)
leaves = [jax.tree.leaves(st) for st in prog.state]
logs = [read_scalars(f"{out}/r/s/{member_dir(n)}") for n in res["members"]]
print(json.dumps({
    "loss": res["test"]["loss"], "members": len(res["members"]),
    "epoch1": [[r["test/loss"] for r in rows if r["step"] == 8 and "test/loss" in r][0]
               for rows in logs],
    "specs": sorted({str(getattr(a.sharding, "spec", None)) for ls in leaves for a in ls}),
    "devices": [len(ls[0].sharding.device_set) for ls in leaves],
}))
"""


def _sharded(d, devices: int, epochs: int, resume=""):
    d.mkdir(exist_ok=True)
    (d / "s.py").write_text(SHARDED)
    flags = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    p = run_py(str(d / "s.py"), str(d), str(epochs), resume, env={"XLA_FLAGS": flags})
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_groups_of_3_8_18_are_sharded_on_8_devices_and_match_one(tmp_path):
    sharded = _sharded(tmp_path / "8", 8, 1)
    single = _sharded(tmp_path / "1", 1, 2)
    # groups of 3, 8 and 18 members: padded to 8, 8 and 24 rows, every leaf sharded
    assert sharded["specs"] == ["P('members',)"]
    assert sharded["devices"] == [8, 8, 8] and single["devices"] == [1, 1, 1]
    assert sharded["members"] == single["members"] == 29  # the inert rows never surface
    np.testing.assert_allclose(sharded["loss"], single["epoch1"], rtol=1e-4)
    # saved on 8 devices, resumed on 1: the checkpoint holds the real members only
    resumed = _sharded(tmp_path / "8", 1, 2, "resume")
    np.testing.assert_allclose(resumed["loss"], single["loss"], rtol=1e-4)


def test_latent_sweep_cli(tmp_path, classifier_dir):
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
        "--models-dir",
        str(tmp_path / "m"),
        "--runs-dir",
        str(tmp_path / "r"),
        "--compile-cache",
        str(tmp_path / "xla"),
        "--quality-samples",
        "500",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(list((tmp_path / "xla").iterdir())) > 10  # the programs, for the next run
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
    # sample quality of every member; an AE's also from the mixture on its codes
    for m in doc["members"]:
        assert m["frechet"] > 0, m
        assert ("frechet_gmm" in m) == (m["kind"] == "ae")
    # the confidence is the mean largest softmax probability of the classifier's logits of
    # the member's 500 prior samples (z ~ N(0, I), seed 0), recomputed here in numpy
    clf = quality.load_classifier(quality.default_path(classifier_dir, "mnist"))
    run_ = load(out)
    for m in doc["members"]:
        images, _ = generate.prior(
            run_, run_.member_index(m["member"]), n=500, seed=0, density="normal"
        )
        logits = clf.apply(images.reshape(500, -1))[0].astype(np.float64)
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        assert m["confidence"] == pytest.approx(prob.max(1).mean(), rel=1e-4), m
    assert " FD GMM" in p.stdout and "Fréchet" in p.stdout
    # where the wall time went: every phase, printed and saved
    phases = doc["timing"]["phases"]
    assert list(phases) == [*PHASES], phases
    assert all(v >= 0 for v in phases.values()) and phases["train"] > 0
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("time: "))
    assert all(f"{k} " in line for k in PHASES) and "outside training" in line
    # stderr is a pipe here: no progress bars unless asked for
    assert "step/s" not in p.stderr and "IW bound" not in p.stderr, p.stderr[-500:]
    check_tensorboard(tmp_path / "r" / "latent_sweep", doc["members"])
    check_hparams_dashboard(tmp_path / "r" / "latent_sweep", doc["members"])


PHASES = (
    "start-up",
    "init",
    "data",
    "compile",
    "train",
    "summaries",
    "checkpoints",
    "epoch eval",
    "figures",  # the samples sheet's images come from the trained state, then it goes
    "final eval",
    "classifier",
    "sample quality",
)


def check_tensorboard(logdir, members):
    """Read every member's events with TensorBoard's own reader: train and test scalars,
    image grids, and an HParams session holding that member's hyperparameters."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for m in members:
        d = logdir / member_dir(m["member"])
        ea = EventAccumulator(str(d), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        ea.Reload()
        tags = ea.Tags()
        for tag in ("train/loss", "test/loss", "test/mse"):
            assert tag in tags["scalars"], (m["member"], tag, tags["scalars"])
        assert ea.Scalars("test/loss")[-1].value == pytest.approx(m["test_loss"], rel=1e-5)
        assert {"recon", "samples"} <= set(tags["images"])
        grid = ea.Images("samples")[-1]
        assert grid.width > 28 and grid.height > 28
        content = ea.PluginTagToContent("hparams")
        data = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()}
        # no experiment record: TensorBoard infers it from the sessions (differing first)
        assert set(data) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
        hp = data["_hparams_/session_start_info"].session_start_info.hparams
        assert hp["kind"].string_value == m["kind"]
        assert hp["latent"].number_value == m["latent"]
        assert hp["seed"].number_value == m["seed"]
        assert hp["hidden"].string_value == "16" and hp["lr"].number_value == 1e-3
        assert hp["epochs"].number_value == 1 and hp["dataset"].string_value == "mnist"


def _post(url: str, body: dict) -> dict:
    import urllib.request

    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def check_hparams_dashboard(logdir, members):
    """What TensorBoard's HParams dashboard shows, asked from a real server: one session
    per member with its hyperparameters and test loss, the differing ones listed first."""
    from tensorboard import program

    tb = program.TensorBoard()
    tb.configure(argv=[None, "--logdir", str(logdir), "--port", "0", "--host", "127.0.0.1"])
    url = tb.launch() + "data/plugin/hparams/"
    exp = _post(url + "experiment", {"experimentName": ""})
    infos = [(h["name"], h["differs"]) for h in exp["hparamInfos"]]
    assert infos[:4] == [("kind", True), ("latent", True), ("likelihood", True), ("seed", True)]
    assert {"batch_size", "beta", "epochs", "hidden", "lr", "data_seed"} <= {n for n, _ in infos}
    assert {m["tag"] for m in (i["name"] for i in exp["metricInfos"])} >= {"test/loss", "test/mse"}
    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    query = {"experimentName": "", "allowedStatuses": statuses, "colParams": [], "sliceSize": 100}
    groups = {g["name"]: g for g in _post(url + "session_groups", query)["sessionGroups"]}
    assert set(groups) == {m["member"] for m in members}
    for m in members:
        g = groups[m["member"]]
        assert g["hparams"]["kind"] == m["kind"] and g["hparams"]["latent"] == m["latent"]
        loss = next(v["value"] for v in g["metricValues"] if v["name"]["tag"] == "test/loss")
        assert loss == pytest.approx(m["test_loss"], rel=1e-5)


def test_progress_bar_shows_one_loss_per_kind():
    from jaxae.runner import kind_means

    # (steps, members): the last step's losses, averaged within each kind only
    loss = np.array([[9.0, 9.0, 9.0], [0.02, 0.04, 101.0]])
    assert kind_means(loss, ["ae", "ae", "vae"]) == {"ae loss": "0.03", "vae loss": "101"}
    assert kind_means(loss[:, :1], [""]) == {"loss": "0.02"}


def test_the_samples_sheet_shows_every_member_or_one_per_configuration():
    from jaxae.config import ModelConfig, grid
    from jaxae.pipeline import sheet_members

    small = grid(ModelConfig(), {"latent": [2, 4]}, seeds=3)
    assert sheet_members(small) == list(range(6))
    big = grid(ModelConfig(), {"kind": ["vae", "ae"], "latent": [2, 4, 8]}, seeds=10)
    shown = [big[i] for i in sheet_members(big)]
    assert len(shown) == 6 and {m.seed for m in shown} == {0}
    assert len({(m.model.kind, m.model.latent) for m in shown}) == 6
    assert len(sheet_members(grid(ModelConfig(), {"latent": list(range(1, 61))}, seeds=2))) == 48


def test_image_summaries_past_48_members_show_each_configurations_first_seed(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from jaxae.summary import Summaries

    hparams = [{"latent": k, "seed": s} for k in range(25) for s in range(2)]  # 50 members
    names = [f"latent={h['latent']},seed={h['seed']}" for h in hparams]
    with Summaries(tmp_path, names, hparams) as summaries:
        summaries.images(1, {"samples": np.ones((50, 2, 4, 4, 1), np.float32)})
    with_images = []
    for n in names:
        ea = EventAccumulator(str(tmp_path / member_dir(n)), size_guidance={"images": 0})
        ea.Reload()
        if "samples" in ea.Tags()["images"]:
            with_images.append(n)
    assert with_images == [f"latent={k},seed=0" for k in range(25)]
