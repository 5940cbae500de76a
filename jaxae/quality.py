"""Sample quality measured by a digit classifier: confidence, class diversity, Fréchet distance.

Whether decoded samples *look like digits* is judged by a small convolutional classifier.
The MNIST and Fashion-MNIST classifiers ship with the package
(``jaxae/weights/classifier-<dataset>.npz``, each checked against the sha256 recorded in
``SHIPPED`` when loaded), so scores compare across installs; ``python -m jaxae.classifier
--retrain`` trains them again from fixed seeds. Another dataset's classifier is trained on
first use into ``classifier-<dataset>`` beside the runs (or in ``$JAXAE_CLASSIFIER_DIR``).
For a set of generated images:

- ``confidence``: the mean probability of the predicted class (1 for unambiguous digits);
- ``class_entropy``: the entropy (nats) of the histogram of predicted classes: log 10 =
  2.303 when every class is generated equally often, 0 when only one is;
- ``frechet``: the Fréchet distance between Gaussians fitted to the classifier's
  penultimate features (128 ReLU units) of the samples and of the test set. It is the
  recipe of FID (Heusel et al. 2017) with an MNIST classifier in place of Inception, so its
  values are not comparable with published FIDs, only with each other (same classifier,
  same number of samples: the estimate is biased upwards for small sets).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import time
import zipfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxae.checkpoint import Checkpointer, CheckpointError, flat_leaves
from jaxae.config import TrainConfig
from jaxae.data import load as load_data
from jaxae.runner import bar_disabled
from jaxae.step import jit_epoch_batches, lr_schedule, make_optimizer

# the image shape of a saved classifier whose config does not record one
DEFAULT_SHAPE = (28, 28, 1)

# the classifiers that ship with the package: jaxae/weights/classifier-<dataset>.npz, and
# the sha256 of each file, checked whenever it is loaded. ``python -m jaxae.classifier
# --retrain --dataset <dataset>`` writes the file again (EPOCHS epochs from SEED) and
# prints its digest. Training on CPU is deterministic: the same JAX and XLA versions write
# the same bytes; other versions or backends may round differently, and give another digest.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = {
    "mnist": "94cd1de410d44e1b4b7f6472088480559925904fdee81ac67c6873cff3848f0e",
    "fashion_mnist": "a59ea6ba5b699a9bec3aa04db108484d3848cb46de778511097bf2cc7c6ad368",
}
EPOCHS = 8
SEED = 0


class ClassifierError(CheckpointError):
    """A classifier weights file is unreadable, corrupt or not the one recorded; the
    message names the file."""


def patches(h, stride: int):
    """3x3 'same' patches (B, H/stride, W/stride, 9C) of h (B, H, W, C).

    A convolution written as patches @ kernel (a test checks it against ``lax``'s padded,
    strided convolution): on XLA:CPU its forward pass and gradient run faster than a plain
    ``nn.Conv``'s.
    """
    p = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    hh, ww = h.shape[1], h.shape[2]
    cols = [p[:, i : i + hh : stride, j : j + ww : stride] for i in range(3) for j in range(3)]
    return jnp.concatenate(cols, -1)


class Classifier(nn.Module):
    """Two 3x3 convolutions of stride 2 (32 and 64 channels), a 128-unit dense layer (the
    features), then 10 logits, for images of ``shape`` (H, W, C)."""

    shape: tuple[int, int, int] = DEFAULT_SHAPE

    @nn.compact
    def __call__(self, x):
        """x (B, H * W * C) in [0, 1] -> (logits (B, 10), features (B, 128))."""
        h = x.reshape(-1, *self.shape)
        for ch in (32, 64):
            h = nn.relu(nn.Dense(ch)(patches(h, 2)))
        f = nn.relu(nn.Dense(128)(h.reshape(h.shape[0], -1)))
        return nn.Dense(10)(f), f


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
    """A restored classifier: its params, the dataset it learnt, its test accuracy, its
    file or folder, the shape (H, W, C) of the images it reads, the sha256 of its weights
    file (``digest``: of the file for a .npz, of ``weights_bytes`` of its params and
    config for a checkpoint folder) and ``source``: "shipped" (the package's file) or
    "path" (a file or folder named by the caller or trained on first use)."""

    params: dict
    dataset: str
    accuracy: float
    path: str
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    digest: str = ""
    source: str = "path"

    def record(self) -> dict:
        """What results.json and eval.json record of the classifier that scored them."""
        return {
            "source": self.source,
            "dataset": self.dataset,
            "digest": self.digest,
            "test_accuracy": self.accuracy,
            "path": self.path,
        }

    def apply(self, x, batch: int = 250):
        """(logits (N, 10), features (N, 128)) as numpy for images x (N, H * W * C) (or
        (N, H, W, C)) in [0, 1].

        Small batches keep the patches in cache: on the 2-core CPU, 250 images a call ran
        2.8x faster than 2000 (34.5k vs 12.3k images/s, an ad-hoc timing).
        """
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        net = Classifier(tuple(self.shape))
        outs = [_forward(net, self.params, x[i : i + batch]) for i in range(0, len(x), batch)]
        return tuple(np.concatenate([np.asarray(o[j]) for o in outs]) for j in (0, 1))


@functools.partial(jax.jit, static_argnums=0)
def _forward(net: Classifier, params, x):
    return net.apply(params, x)


# --- training -------------------------------------------------------------------------------


def _shift(x, key, shape, pad: int = 2):
    """Each image (B, H * W * C) of ``shape`` translated by a random offset of up to ``pad``
    pixels along H and W."""
    h, w, c = shape
    imgs = jnp.pad(x.reshape(-1, h, w, c), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    off = jax.random.randint(key, (x.shape[0], 2), 0, 2 * pad + 1)

    def one(img, o):
        return jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))

    return jax.vmap(one)(imgs, off).reshape(x.shape)


def _epoch(net: Classifier, tx, lr):
    """``run(params, opt_state, images, labels, idx, key, s0)``: one jitted pass, a scan
    over the steps of the batches ``idx`` (steps, B); global step s0 + i has rate lr(s0 + i)
    (``tx`` has unit rate, as ``jaxae.step.make_optimizer`` gives it)."""

    def loss_fn(params, x, y):
        logits, _ = net.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def run(params, opt_state, images, labels, idx, key, s0):
        def step(carry, inp):
            params, opt_state = carry
            i, rows = inp
            x = images[rows].astype(jnp.float32) / 255.0
            x = _shift(x, jax.random.fold_in(key, i), net.shape)
            loss, grads = jax.value_and_grad(loss_fn)(params, x, labels[rows])
            updates, opt_state = tx.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u: u * lr(s0 + i), updates)
            return (optax.apply_updates(params, updates), opt_state), loss

        steps = jnp.arange(idx.shape[0])
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (steps, idx))
        return params, opt_state, losses.mean()

    return run


def accuracy(params, images, labels) -> float:
    """Fraction of images (N, H, W, C), uint8 or in [0, 1], classified as their labels."""
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    clf = TrainedClassifier(params, "", 0.0, "", x.shape[1:])
    return float((clf.apply(x)[0].argmax(-1) == np.asarray(labels)).mean())


def train_classifier(
    train,
    test,
    *,
    epochs: int = 8,
    batch: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
):
    """Train the classifier with Adam (``jaxae.step.make_optimizer``; its rate decays from
    ``lr`` to 0 on a cosine) on randomly shifted images.

    Args:
        train, test: (images (N, H, W, C) uint8, labels (N,)) pairs, as
            ``jaxae.data.load`` returns them; the network reads images of shape (H, W, C).
    Returns:
        (params, test accuracy).
    """
    images, labels = (np.asarray(a) for a in train)
    if images.ndim != 4:
        raise ValueError(f"classifier images must be (N, H, W, C), got shape {images.shape}")
    net = Classifier(tuple(int(d) for d in images.shape[1:]))
    n = images.shape[0]
    x, y = jnp.asarray(images.reshape(n, -1)), jnp.asarray(labels)
    steps = n // batch
    tx = make_optimizer(TrainConfig(lr=lr))  # Adam of unit rate: the scan applies lr(s)
    cosine = lr_schedule("cosine", epochs * steps)  # 1 at step 0, 0 at the end
    run = _epoch(net, tx, lambda s: lr * cosine(s))
    batches = jit_epoch_batches(n, batch)
    key = jax.random.key(seed)
    params = net.init(jax.random.fold_in(key, 0), jnp.zeros((1, x.shape[1])))
    opt_state = tx.init(params)
    bar = tqdm(range(epochs), desc="classifier", disable=bar_disabled(progress))
    for e in bar:
        # epoch e's order and shifts come from fold_in(key, e + 1); fold_in(key, 0) inits
        idx = batches(key, e + 1)
        ekey = jax.random.fold_in(key, e + 1)
        params, opt_state, loss = run(params, opt_state, x, y, idx, ekey, e * steps)
        bar.set_postfix(loss=f"{float(loss):.4f}")
    return params, accuracy(params, *test)


def _slug(dataset: str) -> str:
    return dataset.replace(":", "_").replace("/", "_")


def default_path(models_dir, dataset: str) -> Path:
    """Where the classifier of a dataset is trained on first use:
    ``<root>/classifier-<dataset>``; the root is ``$JAXAE_CLASSIFIER_DIR`` when set (one
    classifier for several model folders), else ``models_dir``."""
    root = os.environ.get("JAXAE_CLASSIFIER_DIR") or models_dir
    return Path(root) / f"classifier-{_slug(dataset)}"


def shipped_path(dataset: str) -> Path:
    """The package's weights file of a dataset's classifier (``SHIPPED`` lists those that
    exist)."""
    return WEIGHTS_DIR / f"classifier-{_slug(dataset)}.npz"


def _abstract(shape):
    x = jnp.zeros((1, math.prod(shape)))
    return jax.eval_shape(lambda: Classifier(shape).init(jax.random.key(0), x))


def sha256(data: bytes) -> str:
    """The hex sha256 digest of some bytes."""
    return hashlib.sha256(data).hexdigest()


def weights_bytes(params, cfg: dict) -> bytes:
    """A classifier as the bytes of its .npz weights file: one array per parameter, named
    by its path (``jaxae.checkpoint.flat_leaves``: ``params/Dense_0/kernel``), and
    ``config``, its config as a JSON string.

    The same params and config always give the same bytes (entries sorted by name, fixed
    timestamps, stored uncompressed), so the file's sha256 identifies the classifier;
    ``numpy.load`` reads the file.
    """
    arrays = {k: np.asarray(v) for k, v in flat_leaves(params).items()}
    arrays["config"] = np.asarray(json.dumps(cfg, sort_keys=True))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(arrays):
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.asarray(arrays[name], order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3  # the same bytes on every platform
            info.external_attr = 0o644 << 16
            z.writestr(info, npy.getvalue())
    return buf.getvalue()


def _from_arrays(arrays: dict) -> tuple[dict, dict, tuple[int, int, int]]:
    """(params, config, image shape) of a weights file's arrays; ValueError when they are
    not the parameters of a ``Classifier``."""
    cfg = json.loads(str(arrays.pop("config")))
    if not isinstance(cfg, dict) or cfg.get("type") != "classifier":
        raise ValueError("not a jaxae classifier")
    shape = tuple(int(d) for d in cfg.get("image_shape", DEFAULT_SHAPE))
    abstract = _abstract(shape)
    want = flat_leaves(abstract)
    if set(arrays) != set(want):
        raise ValueError(f"parameters {sorted(arrays)} are not the network's {sorted(want)}")
    leaves = []
    for name, spec in want.items():
        a = arrays[name]
        if a.shape != spec.shape or a.dtype != spec.dtype:
            raise ValueError(
                f"{name} is {a.dtype}{list(a.shape)}, "
                f"the network's is {spec.dtype}{list(spec.shape)}"
            )
        leaves.append(jnp.asarray(a))
    return jax.tree.unflatten(jax.tree.structure(abstract), leaves), cfg, shape


def load_weights(path, digest: str | None = None) -> TrainedClassifier:
    """Restore a classifier from its .npz weights file (``weights_bytes``).

    Args:
        digest: the sha256 the file must have (a shipped file's, from ``SHIPPED``); None:
            any.
    Raises:
        ClassifierError, naming the file: it is missing or unreadable, its sha256 is not
        ``digest``, or it does not hold a classifier's parameters.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ClassifierError(f"cannot read classifier weights {path}: {e.strerror or e}") from e
    got = sha256(data)
    if digest is not None and got != digest:
        raise ClassifierError(
            f"classifier weights {path} are corrupt or modified: their sha256 {got} is not the "
            f"recorded {digest} (reinstall jaxae, or write them again with "
            "python -m jaxae.classifier --retrain)"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        params, cfg, shape = _from_arrays(arrays)
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as e:
        raise ClassifierError(f"classifier weights {path} are unreadable: {e}") from e
    acc = float(cfg.get("test_accuracy", 0.0))
    return TrainedClassifier(params, cfg.get("dataset", ""), acc, str(path), shape, got)


def load_shipped(dataset: str) -> TrainedClassifier:
    """The classifier of ``dataset`` that ships with the package, its file's sha256
    checked against ``SHIPPED`` (ClassifierError, naming the file, when it differs)."""
    if dataset not in SHIPPED:
        raise ClassifierError(f"no classifier of {dataset} ships with jaxae (only {list(SHIPPED)})")
    clf = load_weights(shipped_path(dataset), SHIPPED[dataset])
    if clf.dataset != dataset:
        raise ClassifierError(f"{clf.path} is a classifier of {clf.dataset}, not of {dataset}")
    return dataclasses.replace(clf, source="shipped")


def _shipped_dataset(path: Path) -> str | None:
    """The dataset whose shipped weights file ``path`` is, or None."""
    return next((d for d in SHIPPED if shipped_path(d) == path.resolve()), None)


def load_classifier(path) -> TrainedClassifier:
    """Restore a classifier: a .npz weights file (``load_weights``; a shipped file is
    checked against its recorded digest) or a checkpoint folder saved by
    ``fit_classifier``; CheckpointError when absent or corrupt.

    A folder's network reads images of the config's ``image_shape`` (28x28x1 when not
    recorded); its digest is the sha256 of ``weights_bytes`` of its params and config.
    """
    p = Path(path)
    if p.suffix == ".npz" or p.is_file():
        shipped = _shipped_dataset(p)
        return load_shipped(shipped) if shipped else load_weights(p)
    with Checkpointer(path, create=False, local=True) as mgr:
        cfg = mgr.read_config()
        if cfg.get("type") != "classifier":
            raise CheckpointError(f"{Path(path).resolve()} is not a jaxae classifier")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shape = tuple(int(d) for d in cfg.get("image_shape", DEFAULT_SHAPE))
        target = jax.tree.map(lambda a: a.update(sharding=device), _abstract(shape))
        params = mgr.restore({"params": target})["params"]
    digest = sha256(weights_bytes(params, cfg))
    return TrainedClassifier(params, cfg["dataset"], cfg["test_accuracy"], str(path), shape, digest)


def resolve(classifier, models_dir, dataset: str, **kw) -> TrainedClassifier:
    """The classifier that scores samples of ``dataset``, the first of:

    1. ``classifier`` itself (a TrainedClassifier), or the one in its file or folder
       (trained there when missing: ``fit_classifier``, which gets ``kw``);
    2. the one that ships with the package for ``dataset`` (``SHIPPED``);
    3. the one at ``default_path(models_dir, dataset)``, trained there when missing.
    """
    if isinstance(classifier, TrainedClassifier):
        return classifier
    if classifier:
        return fit_classifier(classifier, dataset, **kw)
    if dataset in SHIPPED:
        return load_shipped(dataset)
    return fit_classifier(default_path(models_dir, dataset), dataset, **kw)


def fit_classifier(
    path,
    dataset: str = "mnist",
    *,
    epochs: int = EPOCHS,
    retrain: bool = False,
    log=None,
    progress: bool | None = None,
    train_size: int | None = None,
    seed: int = SEED,
) -> TrainedClassifier:
    """The classifier at ``path``: restored when there (unless ``retrain``), else trained
    from ``seed`` and saved there: as a .npz weights file when ``path`` ends in .npz
    (``weights_bytes``: the format of the shipped classifiers), else as a checkpoint folder.

    ``train_size`` trains on the first N training images only (tests, quick looks).
    """
    path = Path(path)
    if not retrain and path.exists():
        clf = load_classifier(path)
        if clf.dataset != dataset:
            raise CheckpointError(f"{path} is a classifier of {clf.dataset}, not of {dataset}")
        return clf
    log = log or logging.getLogger("jaxae").info
    log(f"training the {dataset} classifier ({epochs} epochs, seed {seed}) into {path}")
    start = time.perf_counter()
    train, test = load_data(dataset, "train"), load_data(dataset, "test")
    train = (train[0][:train_size], train[1][:train_size])
    params, acc = train_classifier(train, test, epochs=epochs, seed=seed, progress=progress)
    shape = tuple(int(d) for d in train[0].shape[1:])
    cfg = {"type": "classifier", "dataset": dataset, "epochs": epochs, "test_accuracy": acc}
    cfg.update(train_size=len(train[0]), image_shape=list(shape), seed=seed)
    data = weights_bytes(params, cfg)
    if path.suffix == ".npz":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a reader sees the old file or the new one, never half
    else:
        with Checkpointer(path, max_to_keep=1, local=True) as mgr:
            step = (mgr.latest_step() or 0) + 1
            mgr.save(step, {"params": params}, cfg, wait=True)
    secs = time.perf_counter() - start
    log(
        f"classifier test accuracy {100 * acc:.2f} % ({len(test[0]):,} {dataset} test digits), "
        f"trained in {secs:.0f} s"
    )
    return TrainedClassifier(params, dataset, acc, str(path), shape, sha256(data))


# --- the scores --------------------------------------------------------------------------------


def gaussian_stats(f) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features f (N, D), in float64."""
    f = np.asarray(f, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2):
    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) (Dowson and Landau 1982).

    tr (cov1 cov2)^(1/2) = tr (A cov2 A)^(1/2) with A = cov1^(1/2): both are symmetric
    positive semi-definite, so it is a sum of square roots of eigenvalues.
    """
    w, v = np.linalg.eigh(np.asarray(cov1, np.float64))
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = a @ np.asarray(cov2, np.float64) @ a
    root = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * root)


def class_entropy(pred, classes: int = 10) -> float:
    """Entropy (nats) of the histogram of predicted classes (N,); log(classes) is uniform."""
    p = np.bincount(np.asarray(pred), minlength=classes) / len(pred)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: no "-0.0" for a single class


def scores(clf: TrainedClassifier, images, reference) -> dict:
    """Confidence, class entropy and Fréchet distance of images (N, H * W * C) in [0, 1].

    Args:
        reference: (mean, cov) of the classifier's features of the reference set (the test
            set: ``reference_stats``).
    """
    return scores_of(*clf.apply(images), reference)


def scores_of(logits, f, reference) -> dict:
    """``scores`` of images whose classifier logits (N, 10) and features (N, D) are given."""
    logits = np.asarray(logits, np.float32)
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    return {
        "confidence": float(prob.max(-1).mean()),
        "class_entropy": class_entropy(prob.argmax(-1)),
        "frechet": frechet_distance(*gaussian_stats(f), *reference),
    }


def reference_stats(clf: TrainedClassifier, images) -> tuple[np.ndarray, np.ndarray]:
    """Feature (mean, cov) of reference images (N, H, W, C), uint8 or in [0, 1]."""
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
    return gaussian_stats(clf.apply(x.reshape(len(x), -1))[1])


UNIFORM_ENTROPY = math.log(10)


def calibration(clf: TrainedClassifier, n: int = 10000) -> dict:
    """The scores against the test set of n training digits (what a generator that
    reproduced the data would reach with n samples: the floor of the Fréchet distance at
    that size) and of n images of uniform noise: {"digits": ..., "noise": ...}."""
    ref = reference_stats(clf, load_data(clf.dataset, "test")[0])
    x = load_data(clf.dataset, "train")[0][:n]
    noise = np.random.default_rng(0).random((len(x), x[0].size), dtype=np.float32)
    digits = scores(clf, x.reshape(len(x), -1).astype(np.float32) / 255.0, ref)
    return {"digits": digits, "noise": scores(clf, noise, ref)}
