"""Evaluation beyond the training loop's test metrics: PCA baseline and result tables."""

from __future__ import annotations

import numpy as np


def pca_mse(train_x, test_x, ks) -> dict[int, float]:
    """Test MSE per pixel of PCA with k components fitted on the training set.

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

    x, t = scale(train_x), scale(test_x)
    mu = x.mean(0)
    xc, tc = x - mu, t - mu
    _, vecs = np.linalg.eigh(xc.T @ xc)
    vecs = vecs[:, ::-1]  # leading components first
    total = np.square(tc).sum()
    out = {}
    for k in ks:
        proj = tc @ vecs[:, :k]
        out[int(k)] = float((total - np.square(proj).sum()) / tc.size)
    return out


# --- importance-weighted log-likelihood (Burda et al. 2016, eq. 8) ------------------------


def log_weights(log_lik, mean, logvar, eps):
    """log w = log p(x|z) + log p(z) - log q(z|x) at z = mean + exp(logvar / 2) * eps.

    Args:
        log_lik: z (k, B, D) -> log p(x | z) (k, B).
        mean, logvar: (B, D) posterior parameters.
        eps: (k, B, D) standard normal noise.
    Returns:
        (k, B) log importance weights; each is a single-sample ELBO estimate.
    """
    import jax.numpy as jnp

    from jaxae.losses import gaussian_log_density

    z = mean[None] + jnp.exp(0.5 * logvar)[None] * eps
    zero = jnp.zeros_like(z)
    log_prior = gaussian_log_density(z, zero, zero)
    log_q = gaussian_log_density(z, mean[None], logvar[None])
    return log_lik(z) + log_prior - log_q


def iw_bound(log_w):
    """The k-sample bound log (1/k) sum_i w_i, stably; (k, B) -> (B,)."""
    import jax
    import jax.numpy as jnp

    return jax.scipy.special.logsumexp(log_w, axis=0) - jnp.log(log_w.shape[0])


def model_iw_terms(params, x, mask, *, key, k: int, chunk: int, model):
    """IW bound, mean single-sample -ELBO over k samples and active-unit statistics.

    Args:
        x: (B, F) binarized targets; mask: (D,) latent mask; k samples in chunks of ``chunk``.
    Returns:
        dict of (B,) arrays: ``iw`` (log p(x) lower bound), ``elbo`` (mean over samples),
        ``elbo1`` (first sample only) and the posterior ``mean`` (B, D).
    """
    import jax
    import jax.numpy as jnp

    from jaxae.losses import bernoulli_nll
    from jaxae.models import Model, latent_noise

    mean, logvar = model.apply(params, x, mask=mask, method=Model.encode)
    b, d = mean.shape

    def one_chunk(i):
        eps = latent_noise(jax.random.fold_in(key, i), chunk * b, d).reshape(chunk, b, d)

        def log_lik(z):
            logits = model.apply(params, z.reshape(chunk * b, d), mask=mask, method=Model.decode)
            return -bernoulli_nll(logits.reshape(chunk, b, -1), x[None])

        return log_weights(log_lik, mean, logvar, eps)

    log_w = jax.lax.map(one_chunk, jnp.arange(k // chunk)).reshape(-1, b)
    return {"iw": iw_bound(log_w), "elbo": log_w.mean(0), "elbo1": log_w[0], "mean": mean}


# --- evaluating a restored run: every member of a group at once, vmapped -----------------


def run_groups(run):
    """(model, stacked params, masks (G, D), member indices) per group of a restored run."""
    import jax
    import jax.numpy as jnp

    from jaxae.config import sweep_from_dict
    from jaxae.models import Model, latent_mask
    from jaxae.sweep import group_members

    if run.kind == "model":
        cfg = run.members[0][1]
        params = jax.tree.map(lambda a: a[None], run.state["params"])
        return [(Model(cfg), params, jnp.ones((1, cfg.latent)), [0])]
    sweep = sweep_from_dict(run.config["sweep"])
    out = []
    for g, st in zip(group_members(sweep.members), run.state, strict=True):
        masks = jnp.stack(
            [latent_mask(sweep.members[i].model.latent, g.cfg.latent) for i in g.index]
        )
        out.append((Model(g.cfg), st["params"], masks, list(g.index)))
    return out


def evaluate_run(
    run, *, k: int = 5000, chunk: int = 250, batch: int = 100, seed: int = 0, progress: bool = True
) -> list[dict]:
    """Test metrics of every member: -ELBO, IW NLL (k samples), MSE, active units, PCA.

    Bernoulli VAEs get the likelihood bounds (skipped when k == 0); AEs and Gaussian
    (squared-error) models, whose decoder is not a normalised density here, get MSE and
    active units only.
    """
    from jaxae.config import train_from_dict
    from jaxae.runner import load_images

    if k and k % chunk:
        chunk = next(c for c in range(min(chunk, k), 0, -1) if k % c == 0)
    tcfg = train_from_dict(
        run.config["train"] if run.kind == "model" else run.config["sweep"]["train"]
    )
    test = load_images(tcfg.dataset, "test")
    ks = sorted({m[1].latent for m in run.members})
    pca = pca_mse(load_images(tcfg.dataset, "train"), test, ks)
    rows = [None] * len(run.members)
    for model, params, masks, index in run_groups(run):
        stats = _group_stats(
            model,
            params,
            masks,
            test,
            tcfg,
            k=k,
            chunk=chunk,
            batch=batch,
            seed=seed,
            progress=progress,
        )
        for j, i in enumerate(index):
            name, mcfg, _ = run.members[i]
            row = {
                "member": name,
                "kind": mcfg.kind,
                "latent": mcfg.latent,
                "beta": mcfg.beta,
                "likelihood": mcfg.likelihood,
                "dataset": tcfg.dataset,
                "step": run.step,
                "pca_mse": pca[mcfg.latent],
            }
            row.update({key: v[j].item() if hasattr(v, "shape") else v for key, v in stats.items()})
            rows[i] = row
    return rows


def _group_stats(model, params, masks, test, tcfg, *, k, chunk, batch, seed, progress):
    """Metrics (G,) of the G stacked members of one group."""
    import jax
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from jaxae.models import Model
    from jaxae.train import test_arrays

    cfg = model.cfg
    x, xt, w, n = test_arrays(jnp.asarray(test), tcfg, cfg.likelihood, batch)
    flat = xt.reshape(-1, xt.shape[-1])
    enc = jax.jit(jax.vmap(lambda p, m: model.apply(p, flat, mask=m, method=Model.encode)[0]))
    z = np.asarray(enc(params, masks))[:, :n]  # (G, N, D) posterior means
    mse = _mse(model, params, masks, x, xt, w, n)
    stats = {"mse": mse, "active_units": (z.var(1) > 0.01).sum(-1)}
    if cfg.kind == "vae":
        stats["sample_entropy"] = _sample_entropy(model, params, masks, seed)
    if k == 0 or cfg.kind != "vae" or cfg.likelihood != "bernoulli":
        return stats

    def iw(p, m, xb, key):
        return model_iw_terms(p, xb, m, key=key, k=k, chunk=chunk, model=model)

    terms = jax.jit(jax.vmap(iw, in_axes=(0, 0, None, None)))
    sums = {"iw": 0.0, "elbo": 0.0, "elbo1": 0.0}
    for i in tqdm(range(x.shape[0]), disable=not progress, desc=f"IW bound, k={k}"):
        out = terms(params, masks, xt[i], jax.random.fold_in(jax.random.key(seed), i))
        for name in sums:
            sums[name] = sums[name] + np.asarray((out[name] * w[i]).sum(-1))
    stats.update(
        {
            "nll_iw": -sums["iw"] / n,
            "k": k,
            "neg_elbo_k": -sums["elbo"] / n,
            "neg_elbo_1": -sums["elbo1"] / n,
        }
    )
    return stats


def _sample_entropy(model, params, masks, seed: int, n: int = 1000):
    """Blur of prior samples: mean binary entropy (nats/pixel) of decoded z ~ N(0, I).

    A sharp sample has pixels near 0 or 1 (entropy near 0); a blurry one has grey pixels
    (at most log 2 = 0.693). Same z for every member of the group.
    """
    import jax

    from jaxae.models import Model

    z = jax.random.normal(jax.random.key(seed), (n, masks.shape[-1]))

    def one(p, m):
        logits = model.apply(p, z, mask=m, method=Model.decode)
        q = jax.nn.sigmoid(logits)
        ent = -(q * jax.nn.log_sigmoid(logits) + (1 - q) * jax.nn.log_sigmoid(-logits))
        return ent.mean()

    return np.asarray(jax.jit(jax.vmap(one))(params, masks))


def _mse(model, params, masks, x, xt, w, n):
    """Test MSE per pixel against the grey digits x of the reconstruction from the posterior
    mean of the model's input xt (binarized for Bernoulli models), per member."""
    import jax
    import jax.numpy as jnp

    from jaxae.models import Model

    def one(p, m):
        xf = x.reshape(-1, x.shape[-1])
        xhat = jax.nn.sigmoid(
            model.apply(p, xt.reshape(xf.shape), mask=m, method=Model.reconstruct)
        )
        return (jnp.square(xhat - xf).sum(-1) * w.reshape(-1)).sum() / (n * x.shape[-1])

    return np.asarray(jax.jit(jax.vmap(one))(params, masks))


# --- command line ---------------------------------------------------------------------------


def format_rows(rows: list[dict]) -> str:
    head = (
        f"{'member':34} {'-ELBO(1)':>9} {'-ELBO(k)':>9} {'NLL IW':>9} {'k':>6} "
        f"{'MSE/px':>8} {'PCA MSE':>8} {'active':>6}"
    )
    lines = [head]
    for r in rows:

        def f(key, r=r):
            return f"{r[key]:9.2f}" if key in r else f"{'-':>9}"

        lines.append(
            f"{r['member']:34} {f('neg_elbo_1')} {f('neg_elbo_k')} {f('nll_iw')} "
            f"{r.get('k', '-'):>6} {r['mse']:8.4f} {r['pca_mse']:8.4f} "
            f"{r['active_units']:6d}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    import json
    from pathlib import Path

    from jaxae.cli import Parser, guarded, non_negative_int, positive_int

    p = Parser(
        prog="python -m jaxae.evaluate",
        description="Evaluate every member of a checkpoint on the test set (vmapped): "
        "negative ELBO (1 and k samples), importance-weighted NLL with k samples (Burda et "
        "al. 2016), reconstruction MSE per pixel, active latent units (posterior-mean "
        "variance > 0.01) and the PCA baseline of the same size. Writes eval.json next to "
        "the checkpoint and prints a table. Bounds are in nats on the binarized test set.",
    )
    p.add_argument("--ckpt", required=True, help="run folder under models/ or a step in it")
    p.add_argument(
        "--k",
        type=non_negative_int,
        default=5000,
        help="importance samples (0: skip the likelihood bounds)",
    )
    p.add_argument("--chunk", type=positive_int, default=250, help="samples per decoder call")
    p.add_argument("--batch", type=positive_int, default=100, help="test digits per call")
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    def run_main():
        import time

        from jaxae.restore import load

        run = load(args.ckpt, args.step)
        t = time.perf_counter()
        rows = evaluate_run(
            run,
            k=args.k,
            chunk=args.chunk,
            batch=args.batch,
            seed=args.seed,
            progress=not args.no_progress,
        )
        secs = time.perf_counter() - t
        out = Path(run.path) / "eval.json"
        out.write_text(json.dumps({"step": run.step, "seconds": secs, "members": rows}, indent=1))
        print(format_rows(rows))
        print(f"evaluated in {secs:.1f} s; wrote {out}")
        return 0

    return guarded(run_main)


if __name__ == "__main__":
    raise SystemExit(main())
