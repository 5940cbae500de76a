"""The sample-quality scores: Fréchet distance against closed forms, class entropy by hand,
the classifier's patch convolutions against lax's, and its train-once checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import run_cli

from jaxae import quality
from jaxae.checkpoint import Checkpointer, CheckpointError
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
def clf(tmp_path_factory, data_dir):
    """A classifier trained briefly (2 epochs on 6,400 digits) into a missing folder."""
    path = tmp_path_factory.mktemp("q") / "classifier-mnist"
    logs = []
    out = quality.fit_classifier(path, "mnist", epochs=2, train_size=6400, log=logs.append)
    assert any("training" in m for m in logs) and path.is_dir()
    return out


def test_classifier_is_trained_once_then_restored(clf, monkeypatch):
    assert clf.accuracy > 0.9  # 2 epochs on 6,400 digits; the full command reaches 99 %
    monkeypatch.setattr(quality, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    again = quality.fit_classifier(clf.path, "mnist")
    assert again.accuracy == clf.accuracy
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
    cfg = {"type": "classifier", "dataset": "mnist", "epochs": 2, "test_accuracy": 0.5}
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
    assert blank["confidence"] < 0.3 < other["confidence"] - 0.3  # measured: 0.11 and 0.83


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
