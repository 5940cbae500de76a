"""Metrics beyond the training loop's: IW NLL, sample blur and quality, PCA.

``evaluate_run`` takes a restored run (``jaxae.restore.load``) and evaluates every member
of a group at once, vmapped. The loop's own test metrics (loss, MSE, active units) come
from ``Loaded.test_metrics``: one implementation, ``jaxae.evaluation``.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl
from tqdm import tqdm

from jaxae import generate, likelihoods, quality
from jaxae.data import load as load_data
from jaxae.evaluation import test_arrays
from jaxae.losses import iw_bound, log_weights
from jaxae.models import Model, latent_noise
from jaxae.restore import Loaded
from jaxae.runner import bar_disabled
from jaxae.sweep import EVAL_MEMBERS

log = logging.getLogger("jaxae")


def failure_reason(err: Exception) -> str:
    """One line naming an exception: its type and the first line of its message."""
    return f"{type(err).__name__}: {err}".splitlines()[0]


def record_failure(row: dict, phase: str, err: Exception) -> None:
    """Note in a member's row that one analysis phase failed, and why (one warning line):
    the member's other results, and every other member's, stand."""
    reason = failure_reason(err)
    row.setdefault("failed", {})[phase] = reason
    log.warning(f"{phase} failed for {row.get('member', '?')}: {reason}")


def pca_mse(train_x, test_x, ks, chunk: int = 10000) -> dict[int, float]:
    """Test MSE per pixel of PCA with k components fitted on the training set.

    The training set is read ``chunk`` rows at a time (its Gram matrix is a sum of float32
    products, accumulated in float64; eigh in float64), so the memory it takes is that of
    one chunk, not of a float copy of the whole set.

    Args:
        train_x: (N, F) uint8 or float images (scaled to [0, 1] here when uint8).
        test_x: (M, F) images of the same kind.
        ks: numbers of components.
    Returns:
        {k: mean squared reconstruction error per pixel on test_x}.
    """

    def scale(a):
        a = np.asarray(a)
        return a.astype(np.float64) / (255.0 if a.dtype == np.uint8 else 1.0)

    n, f = train_x.shape
    mu = sum(scale(train_x[i : i + chunk]).sum(0) for i in range(0, n, chunk)) / n
    gram = np.zeros((f, f))
    for i in range(0, n, chunk):
        xc32 = (scale(train_x[i : i + chunk]) - mu).astype(np.float32)
        gram += xc32.T @ xc32
    _, vecs = np.linalg.eigh(gram)
    vecs = vecs[:, ::-1]  # leading components first
    tc = scale(test_x) - mu
    total = np.square(tc).sum()
    out = {}
    for k in ks:
        proj = tc @ vecs[:, :k]
        out[int(k)] = float((total - np.square(proj).sum()) / tc.size)
    return out


# --- importance-weighted log-likelihood (Burda et al. 2016, eq. 8) ------------------------


def model_iw_terms(params, x, mask, *, key, k: int, chunk: int, model):
    """IW bound, mean single-sample -ELBO over k samples and active-unit statistics.

    Args:
        x: (B, F) binarized targets; mask: (D,) latent mask; k samples in chunks of ``chunk``.
    Returns:
        dict of (B,) arrays: ``iw`` (log p(x) lower bound), ``elbo`` (mean over samples),
        ``elbo1`` (first sample only) and the posterior ``mean`` (B, D).
    """
    nll = likelihoods.get(model.cfg.likelihood).nll
    mean, logvar = model.apply(params, x, mask=mask, method=Model.encode)
    b, d = mean.shape

    def one_chunk(i):
        eps = latent_noise(jax.random.fold_in(key, i), chunk * b, d).reshape(chunk, b, d)

        def log_lik(z):
            logits = model.apply(params, z.reshape(chunk * b, d), mask=mask, method=Model.decode)
            return -nll(logits.reshape(chunk, b, -1), x[None])

        return log_weights(log_lik, mean, logvar, eps)[0]

    log_w = jax.lax.map(one_chunk, jnp.arange(k // chunk)).reshape(-1, b)
    return {"iw": iw_bound(log_w), "elbo": log_w.mean(0), "elbo1": log_w[0], "mean": mean}


# --- evaluating a restored run: every member of a group at once, vmapped -----------------


def evaluate_run(
    run: Loaded,
    *,
    k: int = 5000,
    chunk: int = 250,
    batch: int = 100,
    seed: int = 0,
    progress: bool | None = None,
    test: dict | None = None,
    quality_samples: int = 0,
    classifier=None,
) -> list[dict]:
    """Test metrics of every member: -ELBO, IW NLL (k samples), MSE, active units, PCA,
    and the sample-quality scores of ``quality_samples`` decoded samples (0: none).

    VAEs whose likelihood is a density of their targets get the likelihood bounds
    (skipped when k == 0); AEs, squared-error models and Bernoulli models of grey pixels
    (``--no-binarize``), whose decoder is not a normalised density of the targets, get
    MSE, active units and (VAEs) sample blur only.
    A phase that fails for a group or a member (the IW bound, a sample score) is
    recorded in the row's ``failed`` dict ({phase: reason}); the rest stands.
    The reconstruction MSE and the active units are the training loop's test metrics
    (``Loaded.test_metrics``, or ``test`` when the caller has them already).
    ``classifier``: a ``jaxae.quality.TrainedClassifier`` or its file or folder; by
    default the one that ships with jaxae for the run's dataset, else the one next to the
    run (``models/classifier-<dataset>``), trained there when missing
    (``resolve_classifier``).
    """
    if k and k % chunk:
        chunk = next(c for c in range(min(chunk, k), 0, -1) if k % c == 0)
    tcfg = run.train

    def images(split):
        x, _ = load_data(tcfg.dataset, split)
        return x.reshape(x.shape[0], -1)

    test_x = images("test")
    pca = pca_mse(images("train"), test_x, sorted({m.model.latent for m in run.members}))
    opts = {"k": k, "chunk": chunk, "batch": batch, "seed": seed, "progress": progress}
    test_metrics = run.test_metrics() if test is None else test
    rows = [None] * len(run.members)
    for g in run.groups:
        stats, err = _group_stats(g.model, g.params, g.masks, test_x, tcfg, **opts)
        for j, i in enumerate(g.index):
            m = run.members[i]
            row = {
                "member": m.name,
                **m.axes(),
                "likelihood": m.model.likelihood,
                "dataset": tcfg.dataset,
                "step": run.step,
                "pca_mse": pca[m.model.latent],
                "mse": test_metrics["mse"][i],
                "active_units": int(test_metrics["active_units"][i]),
            }
            row.update({key: v[j].item() if hasattr(v, "shape") else v for key, v in stats.items()})
            if err is not None:
                record_failure(row, "IW bound", err)
            rows[i] = row
    if quality_samples:
        clf = resolve_classifier(run, classifier, progress=progress)
        log.info(f"sample scores: {quality_samples} samples of each of {len(rows)} members")
        scored = sample_quality(run, clf, n=quality_samples, seed=seed, progress=progress)
        for row, s in zip(rows, scored, strict=True):
            failed = {**row.get("failed", {}), **s.pop("failed", {})}
            row.update(s)
            if failed:
                row["failed"] = failed
    return rows


def resolve_classifier(run: Loaded, classifier=None, *, progress=None):
    """The ``jaxae.quality.TrainedClassifier`` that scores a run's samples: ``classifier``
    (itself, or its file or folder), else the one that ships with jaxae for the run's
    dataset, else ``classifier-<dataset>`` beside the run, trained there when missing
    (``jaxae.quality.resolve``). Its ``record()`` is what eval.json notes of it."""
    return quality.resolve(classifier, Path(run.path).parent, run.train.dataset, progress=progress)


def sample_quality(run: Loaded, clf, *, n: int = 10000, seed: int = 0, progress=None):
    """Classifier scores (``jaxae.quality.scores``) of n decoded samples of every member.

    Every member decodes z ~ N(0, I) (``confidence``, ``class_entropy``, ``frechet``); an
    AE also decodes samples of the Gaussian mixture fitted on its training codes
    (the same keys with ``_gmm``: ``jaxae.density``). The Fréchet distance is to the
    classifier features of the test set.

    Batched: the mixtures are fitted in a thread pool while the device works, and each
    group decodes and classifies its members' samples in one compiled program, a fixed
    number of members (``SCORE_CHUNK``) per call, so the memory does not grow with the
    member count. A member whose samples fail is recorded as failed; the others go on.
    Returns:
        one dict per member.
    """
    if clf.dataset != run.train.dataset:
        raise ValueError(f"a {clf.dataset} classifier cannot score {run.train.dataset} samples")
    # numpy's BLAS one thread per caller: its threads would otherwise spin against XLA's
    # on the same cores
    with one_blas_thread():
        return _sample_quality(run, clf, n, seed, progress)


def _sample_quality(run: Loaded, clf, n: int, seed: int, progress) -> list[dict]:
    ref = quality.reference_stats(clf, load_data(run.train.dataset, "test")[0])
    rows: list[dict] = [{} for _ in run.members]
    aes = [i for i, m in enumerate(run.members) if m.model.kind == "ae"]
    bar = tqdm(
        total=len(run.members) + len(aes),
        disable=bar_disabled(progress),
        desc=f"sample quality, {n} samples",
    )
    # host arrays: placed like the run's params (replicated on every device of a sweep
    # restored on several), not committed to the classifier's device
    clf_params = jax.tree.map(np.asarray, clf.params)
    net = quality.Classifier(tuple(clf.shape))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, bar:
        mixtures = {i: pool.submit(generate.code_density, run, i) for i in aes}
        for g in run.groups:
            latent = g.masks.shape[-1]
            normal = np.asarray(latent_noise(jax.random.key(seed), n, latent))  # column j: (key, j)

            def latents(j, i, suffix, g=g, latent=latent, normal=normal):
                """z (n, D) of member i (row j of group g): its own size, zero beyond."""
                if not suffix:
                    return normal * np.asarray(g.masks[j])
                z = mixtures[i].result().sample(n, seed).astype(np.float32)
                return np.pad(z, ((0, 0), (0, latent - z.shape[1])))

            jobs = [(j, i, "") for j, i in enumerate(g.index)]
            jobs += [(j, i, "_gmm") for j, i in enumerate(g.index) if i in mixtures]
            # a chunk's latents are made when it is scored: the memory does not grow
            # with the member count
            for start in range(0, len(jobs), SCORE_CHUNK):
                part, zs = [], []
                for job in jobs[start : start + SCORE_CHUNK]:
                    try:
                        zs.append(latents(*job))
                    except Exception as e:  # noqa: BLE001 - one member's score, recorded
                        record_failure(rows[job[1]], "sample quality (mixture)", e)
                        bar.update()
                        continue
                    part.append(job)
                if not part:
                    continue
                rows_ = np.asarray([job[0] for job in part], np.int32)
                out = _decode_and_classify(g.model, net, g.params, rows_, np.stack(zs), clf_params)
                logits, feats = (np.asarray(o) for o in out)
                for (_, i, suffix), lg, ft in zip(part, logits, feats, strict=True):
                    try:
                        s = quality.scores_of(lg, ft, ref)
                    except Exception as e:  # noqa: BLE001 - one member's score, recorded
                        record_failure(
                            rows[i], f"sample quality{' (mixture)' if suffix else ''}", e
                        )
                    else:
                        rows[i].update({k + suffix: v for k, v in s.items()})
                    bar.update()
    return rows


SCORE_CHUNK = 8  # members decoded and classified per call of the compiled scorer


def one_blas_thread():
    """A context in which numpy's BLAS (covariances, eigendecompositions, the mixture fits)
    runs single-threaded, restored on exit."""
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode_and_classify(model: Model, net, params, rows, z, clf_params, batch: int = 250):
    """Logits and features of the images that the members ``rows`` of stacked ``params``
    decode from their latents z (J, n, D), one member after the other, the classifier
    ``batch`` images a step (``TrainedClassifier.apply``'s batch)."""
    lik = likelihoods.get(model.cfg.likelihood)
    n = z.shape[1]
    pad = -n % batch

    def one(args):
        row, zj = args
        p = jax.tree.map(lambda a: a[row], params)
        x = lik.mean(model.apply(p, zj, method=Model.decode)).reshape(n, -1)
        x = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, batch, x.shape[-1])
        logits, feats = jax.lax.map(lambda b: net.apply(clf_params, b), x)
        return logits.reshape(-1, logits.shape[-1])[:n], feats.reshape(-1, feats.shape[-1])[:n]

    return jax.lax.map(one, (rows, z))


def _group_stats(model, params, masks, test, tcfg, *, k, chunk, batch, seed, progress):
    """(metrics (G,) of the G stacked members of one group, the IW bound's error or None)."""
    cfg = model.cfg
    x, xt, w, n = test_arrays(jnp.asarray(test), tcfg, cfg.likelihood, batch)
    stats = {}
    if cfg.kind == "vae":
        stats["sample_entropy"] = _sample_entropy(model, params, masks, seed)
    if k == 0 or cfg.kind != "vae":
        return stats, None
    if not likelihoods.bounds_log_likelihood(cfg.likelihood, tcfg.binarize):
        log.info(
            f"no likelihood bounds for {cfg.likelihood} on "
            f"{'grey' if likelihoods.get(cfg.likelihood).binarize else 'its'} targets: "
            "not a normalised density of them"
        )
        return stats, None
    try:
        stats.update(_iw_stats(model, params, masks, x, xt, w, n, k, chunk, seed, progress))
    except Exception as e:  # noqa: BLE001 - recorded per member by the caller
        return stats, e
    return stats, None


def _iw_stats(model, params, masks, x, xt, w, n, k, chunk, seed, progress):
    """IW NLL and k-sample -ELBO (G,) of the G stacked members, summed over test batches."""

    def iw(p, m, xb, key):
        return model_iw_terms(p, xb, m, key=key, k=k, chunk=chunk, model=model)

    terms = jax.jit(jax.vmap(iw, in_axes=(0, 0, None, None)))
    sums = {"iw": 0.0, "elbo": 0.0, "elbo1": 0.0}
    log.info(f"IW bound, k={k}: {masks.shape[0]} member(s) over {n} test digits")
    bar = {"disable": bar_disabled(progress), "desc": f"IW bound, k={k}"}
    for i in tqdm(range(x.shape[0]), **bar):
        out = terms(params, masks, xt[i], jax.random.fold_in(jax.random.key(seed), i))
        for name in sums:
            sums[name] = sums[name] + np.asarray((out[name] * w[i]).sum(-1))
    return {
        "nll_iw": -sums["iw"] / n,
        "k": k,
        "neg_elbo_k": -sums["elbo"] / n,
        "neg_elbo_1": -sums["elbo1"] / n,
    }


def _sample_entropy(model, params, masks, seed: int, n: int = 1000):
    """Blur of prior samples: mean binary entropy (nats/pixel) of decoded z ~ N(0, I).

    A sharp sample has pixels near 0 or 1 (entropy near 0); a blurry one has grey pixels
    (at most log 2 = 0.693). Same z for every member of the group.
    """
    z = latent_noise(jax.random.key(seed), n, masks.shape[-1])  # column j from (key, j)

    def one(args):
        p, m = args
        logits = model.apply(p, z, mask=m, method=Model.decode)
        q = jax.nn.sigmoid(logits)
        ent = -(q * jax.nn.log_sigmoid(logits) + (1 - q) * jax.nn.log_sigmoid(-logits))
        return ent.mean()

    # EVAL_MEMBERS members at a time: the decoded images of a few members in memory
    return np.asarray(
        jax.jit(lambda a: jax.lax.map(one, a, batch_size=EVAL_MEMBERS))((params, masks))
    )
