"""The sample-quality scores: Fréchet distance against closed forms, class entropy by hand,
the classifier's patch convolutions against lax's, its train-once checkpoint, and the
shipped classifiers: their digests, accuracy, refusal of a corrupt file, the retrain."""

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import run_cli

import jaxae.cli
from jaxae import quality
from jaxae.checkpoint import Checkpointer, CheckpointError
from jaxae.cli import classifier as classifier_cli
from jaxae.data import load


def _random_cov(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    # diagonal covariances: |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2
    m1, m2 = rng.standard_normal(5), rng.standard_normal(5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    want = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = quality.frechet_distance(m1, np.diag(a), m2, np.diag(b))
    assert got == pytest.approx(want, rel=1e-10)
    # full covariances: scipy's matrix square root of the (non-symmetric) product
    c1, c2 = _random_cov(rng, 8), _random_cov(rng, 8)
    m1, m2 = rng.standard_normal(8), rng.standard_normal(8)
    root = scipy.linalg.sqrtm(c1 @ c2).real
    want = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * root)
    assert quality.frechet_distance(m1, c1, m2, c2) == pytest.approx(want, rel=1e-9)
    assert quality.frechet_distance(m2, c2, m1, c1) == pytest.approx(want, rel=1e-9)
    assert quality.frechet_distance(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_samples_converges_to_the_gaussians():
    rng = np.random.default_rng(1)
    c1, c2 = _random_cov(rng, 4), _random_cov(rng, 4)
    m1, m2 = np.zeros(4), np.full(4, 0.5)
    want = quality.frechet_distance(m1, c1, m2, c2)
    x = rng.multivariate_normal(m1, c1, 200_000)
    y = rng.multivariate_normal(m2, c2, 200_000)
    got = quality.frechet_distance(*quality.gaussian_stats(x), *quality.gaussian_stats(y))
    assert got == pytest.approx(want, rel=0.02)


def test_class_entropy_by_hand():
    assert quality.class_entropy(np.arange(10).repeat(7)) == pytest.approx(np.log(10))
    assert quality.class_entropy(np.full(50, 3)) == 0.0
    p = np.array([2, 3, 1]) / 6  # classes 0, 0, 1, 1, 1, 2
    assert quality.class_entropy(np.array([0, 0, 1, 1, 1, 2])) == pytest.approx(
        -(p * np.log(p)).sum()
    )


def test_patch_convolution_is_a_padded_strided_convolution():
    rng = np.random.default_rng(2)
    h = jnp.asarray(rng.standard_normal((3, 14, 14, 5)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 7)), jnp.float32)
    want = jax.lax.conv_general_dilated(
        h, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    got = quality.patches(h, 2) @ kernel.reshape(45, 7)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def clf(data_dir):
    """The MNIST classifier that ships with the package."""
    return quality.load_shipped("mnist")


def test_classifier_is_trained_once_then_restored(tmp_path, monkeypatch, data_dir):
    # 2 epochs on 6,400 digits into a missing folder; the shipped one reaches 99 %
    path, logs = tmp_path / "classifier-mnist", []
    clf = quality.fit_classifier(path, "mnist", epochs=2, train_size=6400, log=logs.append)
    assert any("training" in m for m in logs) and path.is_dir()
    assert clf.accuracy > 0.9 and clf.source == "path"
    monkeypatch.setattr(quality, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    again = quality.fit_classifier(clf.path, "mnist")
    assert again.accuracy == clf.accuracy and again.digest == clf.digest
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(clf.params), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="classifier of mnist, not of fashion_mnist"):
        quality.fit_classifier(clf.path, "fashion_mnist")


def _blocks(n, seed, shape=(20, 30, 3)):
    """Images (n, H, W, C) uint8 over noise whose label c is where a 4x4 block lies (row
    c // 5, column c % 5 of a grid 9 rows and 6 columns apart) and its channel (c % 3)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, *shape), dtype=np.uint8)
    for i, c in enumerate(y):
        r, col = 3 + 9 * (c // 5), 2 + 6 * (c % 5)
        x[i, r : r + 4, col : col + 4, c % 3] = 255
    return x, y


def test_classifier_of_another_image_shape_trains_saves_and_restores(tmp_path, monkeypatch):
    # 20x30 RGB images: the network, the shifts and the saved config follow the data's
    # shape; a network of any other shape cannot read them, and without the optimiser's
    # updates the accuracy stays near 0.1
    data = {"train": _blocks(3840, 0), "test": _blocks(500, 1)}
    monkeypatch.setattr(quality, "load_data", lambda name, split: data[split])
    path = tmp_path / "classifier-blocks"
    clf = quality.fit_classifier(path, "blocks", epochs=3, log=lambda m: None)
    assert clf.shape == (20, 30, 3) and clf.accuracy > 0.9
    assert quality.load_classifier(path).shape == (20, 30, 3)
    logits, _ = quality.load_classifier(path).apply(data["test"][0] / 255.0)
    np.testing.assert_array_equal(logits, clf.apply(data["test"][0] / 255.0)[0])
    assert (logits.argmax(-1) == data["test"][1]).mean() == clf.accuracy


def test_classifier_saved_without_its_shape_restores_as_28x28x1(clf, tmp_path):
    # a classifier config that records no image shape is one of 28x28x1 digits
    cfg = {"type": "classifier", "dataset": "mnist", "epochs": 8, "test_accuracy": 0.5}
    with Checkpointer(tmp_path / "old", max_to_keep=1, local=True) as mgr:
        mgr.save(1, {"params": clf.params}, {**cfg, "train_size": 6400}, wait=True)
    old = quality.load_classifier(tmp_path / "old")
    assert old.shape == (28, 28, 1) and old.accuracy == 0.5
    x = load("mnist", "test")[0][:300] / 255.0
    np.testing.assert_array_equal(old.apply(x)[0], clf.apply(x)[0])


def test_scores_of_real_and_fake_digits(clf):
    test, train = load("mnist", "test")[0], load("mnist", "train")[0]
    ref = quality.reference_stats(clf, test)
    x = test.reshape(len(test), -1) / 255.0
    same = quality.scores(clf, x, ref)
    other = quality.scores(clf, train[:10000].reshape(10000, -1) / 255.0, ref)
    noise = quality.scores(clf, np.random.default_rng(0).random(x.shape), ref)
    assert abs(same["frechet"]) < 1e-8 * noise["frechet"]  # the test set against itself
    assert same["class_entropy"] > 2.28  # MNIST's test classes are nearly uniform
    ones = quality.scores(clf, x[load("mnist", "test")[1] == 1], ref)
    assert other["frechet"] < 0.05 * noise["frechet"]  # fresh real digits score near 0
    assert ones["class_entropy"] < 0.2 and ones["frechet"] > 10 * other["frechet"]
    # confidence: the mean largest softmax probability of the classifier's logits, here
    # recomputed in float64 numpy; blank images (no digit) get a far lower one
    logits, _ = clf.apply(train[:10000].reshape(10000, -1) / 255.0)
    assert other["confidence"] == pytest.approx(_softmax(logits).max(1).mean(), rel=1e-5)
    blank = quality.scores(clf, np.zeros((500, 784)), ref)
    assert blank["confidence"] < 0.3 < other["confidence"] - 0.3  # shipped: 0.12 and 0.99


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True), dtype=np.float64)
    return e / e.sum(-1, keepdims=True)


def test_confidence_of_a_classifier_with_known_logits(clf):
    # every weight zero and the output bias log p: every image's logits are log p, so its
    # probabilities are p and the confidence is max p, whatever the images
    p = np.array([0.05, 0.1, 0.6, 0.05, 0.04, 0.04, 0.03, 0.03, 0.03, 0.03])
    params = jax.tree.map(jnp.zeros_like, clf.params)
    params["params"]["Dense_3"]["bias"] = jnp.log(jnp.asarray(p, jnp.float32))
    known = quality.TrainedClassifier(params, "mnist", 0.0, "")
    x = np.random.default_rng(1).random((300, 784), dtype=np.float32)
    s = quality.scores(known, x, (np.zeros(128), np.zeros((128, 128))))
    assert s["confidence"] == pytest.approx(0.6, rel=1e-6)
    assert s["class_entropy"] == 0.0 and s["frechet"] == pytest.approx(0.0, abs=1e-12)


def test_classifier_command_trains_once_and_prints_its_accuracy(tmp_path):
    args = ("jaxae.classifier", "--out", str(tmp_path / "c"), "--epochs", "1")
    args += ("--train-size", "640", "--no-progress")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:]
    # progress lines go to stderr (the "jaxae" logger), results to stdout
    assert "training the mnist classifier" in first.stderr
    assert "training the" not in second.stderr  # found, not trained again
    acc = [ln for ln in first.stdout.splitlines() if "test accuracy" in ln][-1]
    assert acc in second.stdout and "Fréchet distance" in second.stdout


# --- the shipped classifiers -------------------------------------------------------------------


def test_shipped_classifiers_load_and_match_their_recorded_digests(data_dir):
    assert set(classifier_cli.SHIPPED) == set(quality.SHIPPED)  # --help names them, JAX-free
    for dataset, digest in quality.SHIPPED.items():
        path = quality.shipped_path(dataset)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        clf = quality.load_shipped(dataset)
        assert (clf.dataset, clf.digest, clf.source) == (dataset, digest, "shipped")
        assert clf.shape == (28, 28, 1) and clf.path == str(path)
        assert clf.record() == {
            "source": "shipped",
            "dataset": dataset,
            "digest": digest,
            "test_accuracy": clf.accuracy,
            "path": str(path),
        }
        # the file is weights_bytes of its params and config, trained as --retrain trains
        with np.load(path) as z:
            cfg = json.loads(str(z["config"]))
        assert quality.weights_bytes(clf.params, cfg) == path.read_bytes()
        assert (cfg["epochs"], cfg["seed"], cfg["train_size"]) == (quality.EPOCHS, 0, 60000)
        if (data_dir / dataset).is_dir():  # its recorded test accuracy, measured again
            x, y = load(dataset, "test")
            assert quality.accuracy(clf.params, x, y) == pytest.approx(clf.accuracy, abs=3e-4)


def test_shipped_mnist_classifier_reaches_98_percent_on_the_test_set(clf):
    x, y = load("mnist", "test")
    assert len(y) == 10000 and quality.accuracy(clf.params, x, y) >= 0.98


def test_scores_use_the_named_then_the_shipped_then_a_trained_classifier(
    classifier_dir, tmp_path, monkeypatch
):
    # conftest's folder holds the shipped params and config: a classifier named by its
    # folder is scored as "path", with the same digest
    folder = quality.default_path(classifier_dir, "mnist")
    assert folder.is_dir()
    named = quality.resolve(str(folder), tmp_path, "mnist")
    assert (named.source, named.path, named.digest) == (
        "path",
        str(folder),
        quality.SHIPPED["mnist"],
    )
    # none named: the shipped one, though a folder lies where one would be trained
    shipped = quality.resolve(None, tmp_path, "mnist")
    assert (shipped.source, shipped.digest) == ("shipped", quality.SHIPPED["mnist"])
    # a dataset without shipped weights: trained on first use in classifier-<dataset>
    monkeypatch.delenv("JAXAE_CLASSIFIER_DIR")
    calls = []
    monkeypatch.setattr(quality, "fit_classifier", lambda p, d, **kw: calls.append((p, d)))
    quality.resolve(None, tmp_path, "tfds:kmnist")
    assert calls == [(tmp_path / "classifier-tfds_kmnist", "tfds:kmnist")]


def test_a_corrupt_copy_of_the_shipped_file_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    bad = weights / "classifier-mnist.npz"
    data = bytearray(quality.shipped_path("mnist").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    bad.write_bytes(bytes(data))
    with pytest.raises(quality.ClassifierError, match="sha256") as e:
        quality.load_weights(bad, quality.SHIPPED["mnist"])
    assert str(bad) in str(e.value) and quality.SHIPPED["mnist"] in str(e.value)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a weights file")
    with pytest.raises(quality.ClassifierError, match=f"{garbage} are unreadable"):
        quality.load_classifier(garbage)
    # in the package's place: the scores refuse it, and the command in one line, exit 1
    monkeypatch.setattr(quality, "WEIGHTS_DIR", weights)
    with pytest.raises(quality.ClassifierError, match="sha256"):
        quality.resolve(None, tmp_path, "mnist")
    monkeypatch.setattr(jaxae.cli, "console_log", lambda: None)
    assert classifier_cli.main(["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "sha256" in err, err


def test_retrain_writes_a_weights_file_whose_digest_reproduces(tmp_path, data_dir):
    out = tmp_path / "w" / "clf.npz"
    args = ("jaxae.classifier", "--retrain", "--out", str(out), "--epochs", "1")
    p = run_cli(*args, "--train-size", "640", "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in p.stdout and "trained in" in p.stdout
    assert digest != quality.SHIPPED["mnist"]  # 1 epoch on 640 digits; the package's untouched
    assert quality.load_shipped("mnist").digest == quality.SHIPPED["mnist"]
    # the same seed, data and steps in this process: the same bytes
    again = quality.fit_classifier(
        tmp_path / "again.npz", "mnist", epochs=1, train_size=640, retrain=True, log=print
    )
    assert again.digest == digest and (tmp_path / "again.npz").read_bytes() == out.read_bytes()
    loaded = quality.load_classifier(out)
    assert (loaded.digest, loaded.source, loaded.accuracy) == (digest, "path", again.accuracy)


def test_batched_sample_scores_equal_each_members_own(tmp_path, monkeypatch):
    # metrics.sample_quality decodes and classifies a group's members in chunks inside
    # one program; each member's scores must be those of its own decoded samples
    # (generate.prior, then quality.scores): the right params, latent size and z per row,
    # chunks of 3 over 4 members and an AE's mixture samples included, n not a multiple
    # of the classifier's batch
    import shutil
    from pathlib import Path

    from jaxae import generate, metrics
    from jaxae.data import load as load_data
    from jaxae.restore import load

    fixture = Path(__file__).parent / "fixtures" / "checkpoints" / "sweep"
    shutil.copytree(fixture, tmp_path / "sweep")
    run = load(tmp_path / "sweep")
    clf = quality.load_shipped("mnist")
    monkeypatch.setattr(metrics, "SCORE_CHUNK", 3)
    n, seed = 300, 5
    got = metrics.sample_quality(run, clf, n=n, seed=seed, progress=False)
    ref = quality.reference_stats(clf, load_data("mnist", "test")[0])
    assert {m.model.kind for m in run.members} == {"vae", "ae"}
    for i, m in enumerate(run.members):
        for density in ("normal", "gmm") if m.model.kind == "ae" else ("normal",):
            images, _ = generate.prior(run, i, n=n, seed=seed, density=density)
            want = quality.scores(clf, images.reshape(n, -1), ref)
            suffix = "_gmm" if density == "gmm" else ""
            for k, v in want.items():
                np.testing.assert_allclose(got[i][k + suffix], v, rtol=1e-4, err_msg=m.name + k)
