"""Matplotlib figures and image grids, drawn with matplotlib's object API.

Figures are ``matplotlib.figure.Figure`` objects saved straight to files: no pyplot, no
global backend switch, so a notebook's inline backend and a user's own figures are left
as they were.
"""

from __future__ import annotations

import math

import numpy as np


def tile(images, cols: int | None = None, pad: int = 1):
    """Tile (n, H, W, C) images in [0, 1] into one (H', W', C) grid with a 1-px border."""
    images = np.clip(np.asarray(images, np.float32), 0, 1)
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + q * (w + pad) : pad + q * (w + pad) + w,
        ] = im
    return grid


def save_png(path, grid, scale: int = 3) -> None:
    """Write an (H, W, C) grid in [0, 1] as a PNG (grey for C == 1), enlarged ``scale`` x."""
    from matplotlib.image import imsave

    g = np.asarray(grid).repeat(scale, 0).repeat(scale, 1)
    imsave(str(path), g[..., 0] if g.shape[-1] == 1 else g, cmap="gray", vmin=0, vmax=1)


def _figure(**kwargs):
    """A figure that belongs to no pyplot state (``Figure.savefig`` picks the renderer)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _series(summary, kind, x, y, arch=None):
    rs = sorted(
        (r for r in summary if r["kind"] == kind and arch in (None, r.get("arch"))),
        key=lambda r: r[x],
    )
    return ([r[x] for r in rs], [r[y] for r in rs], [r.get(f"{y}_std", 0.0) for r in rs])


def latent_curves(summary: list[dict], path) -> None:
    """VAE test -ELBO and recon, KL; MSE per pixel (PCA reference) and active units."""
    kinds = sorted({r["kind"] for r in summary})
    panels = [
        ("test_loss", "VAE test -ELBO and recon (nats)", ["vae"]),
        ("test_kl", "VAE test KL (nats)", ["vae"]),
        ("test_mse", "test MSE per pixel", kinds),
        ("active_units", "active latent units", kinds),
        ("frechet", "sample quality: Fréchet distance (lower is better)", kinds),
    ]
    panels = [p for p in panels if set(p[2]) & set(kinds) and p[0] in summary[0]]
    fig = _figure(figsize=(4.5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    archs = sorted({r.get("arch", "mlp") for r in summary})  # one style per architecture
    style = {a: ("o", "-") if i == 0 else ("^", "-.") for i, a in enumerate(archs)}
    for ax, (y, title, ks) in zip(axes[0], panels, strict=True):
        for k in ks:
            for arch in archs:
                xs, ys, es = _series(summary, k, "latent", y, arch if len(archs) > 1 else None)
                if not xs:
                    continue
                label = k.upper() + (f" {arch}" if len(archs) > 1 else "")
                color = {"vae": "C0", "ae": "C1"}[k]
                m, ls = style[arch]
                ax.errorbar(xs, ys, yerr=es, marker=m, ls=ls, capsize=3, label=label, color=color)
        if y == "test_loss" and "vae" in kinds:
            for arch in archs:
                xs, ys, es = _series(
                    summary, "vae", "latent", "test_recon", arch if len(archs) > 1 else None
                )
                label = "VAE recon" + (f" {arch}" if len(archs) > 1 else "")
                ax.errorbar(
                    xs, ys, yerr=es, marker="s", ls="--", capsize=3, color="C2", label=label
                )
        if y == "frechet":  # z ~ N(0, I) above; an AE's codes have their own density
            if any("frechet_gmm" in r for r in summary):
                xs, ys, es = _series(summary, "ae", "latent", "frechet_gmm")
                ax.errorbar(
                    xs, ys, yerr=es, marker="s", ls="--", capsize=3, color="C3", label="AE, GMM z"
                )
            ax.set_yscale("log")
        if y == "active_units":
            xs = sorted({r["latent"] for r in summary})
            ax.plot(xs, xs, "k:", label="all units")
        if y == "test_mse":
            xs, ys, _ = _series(summary, kinds[0], "latent", "pca_mse")
            ax.plot(xs, ys, "k--", label="PCA")
            ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("latent size")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def rate_distortion(summary: list[dict], path) -> None:
    """Recon vs KL across betas (rate-distortion), and both vs beta: one line per setting
    of the other axes (latent, warm-up, learning rate, ...), labelled when there are
    several."""
    vae = [r for r in summary if r["kind"] == "vae"]
    others = [k for k in ("arch", "latent", "warmup", "lr") if len({r.get(k) for r in vae}) > 1]
    lines: dict[tuple, list[dict]] = {}
    for r in sorted(vae, key=lambda r: r["beta"]):
        lines.setdefault(tuple(r.get(k) for k in others), []).append(r)
    scored = all("frechet" in r for r in vae)
    fig = _figure(figsize=(20 if scored else 15, 3.8))
    a, b, c, *d = fig.subplots(1, 4 if scored else 3)
    for key, rs in lines.items():
        name = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in zip(others, key, strict=True)
        )
        a.errorbar(
            [r["test_kl"] for r in rs],
            [r["test_recon"] for r in rs],
            xerr=[r["test_kl_std"] for r in rs],
            yerr=[r["test_recon_std"] for r in rs],
            marker="o",
            capsize=3,
            label=name or None,
        )
        for r in rs:
            a.annotate(
                f"β={r['beta']:g}",
                (r["test_kl"], r["test_recon"]),
                textcoords="offset points",
                xytext=(5, 5),
            )
        betas = [r["beta"] for r in rs]
        for k, label in (("test_recon", "recon"), ("test_kl", "KL"), ("test_loss", "loss")):
            b.errorbar(
                betas,
                [r[k] for r in rs],
                yerr=[r[f"{k}_std"] for r in rs],
                marker="o",
                capsize=3,
                label=f"{label} {name}".strip(),
            )
        for ax, k in ((c, "sample_entropy"), *((ax, "frechet") for ax in d)):
            if k in rs[0]:
                ax.errorbar(
                    betas,
                    [r[k] for r in rs],
                    yerr=[r[f"{k}_std"] for r in rs],
                    marker="o",
                    capsize=3,
                    label=name or None,
                )
    for ax in d:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("beta")
        ax.set_title("sample quality: Fréchet distance (lower is better)")
        ax.grid(alpha=0.3)
    a.set_xlabel("rate: test KL (nats)")
    a.set_ylabel("distortion: test recon (nats)")
    a.set_title("rate-distortion across beta")
    b.set_xscale("log", base=2)
    b.set_xlabel("beta")
    b.set_ylabel("nats")
    b.set_title("test terms vs beta (loss = recon + beta KL)")
    c.set_xscale("log", base=2)
    c.set_xlabel("beta")
    c.set_ylabel("nats / pixel")
    c.set_title("blur of prior samples (pixel entropy)")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    b.legend(fontsize="small")
    if len(lines) > 1:
        a.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sheet(names: list[str], grids, path, *, title: str | None = None) -> None:
    """Image grids (H, W, C) side by side, one titled panel per member."""
    n = len(names)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    h, w = np.asarray(grids[0]).shape[:2]
    size = 2.2 * max(1.0, w / h)
    fig = _figure(figsize=(size * cols, 2.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name, g in zip(axes.flat, names, grids, strict=False):
        g = np.asarray(g)
        ax.imshow(g[..., 0] if g.shape[-1] == 1 else g, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name.replace(",", "\n", 1), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def scatter(names: list[str], points, labels, path, *, xlabel="z1", ylabel="z2") -> None:
    """Latent means (n, 2) per member, coloured by class label."""
    n = len(names)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = _figure(figsize=(4.2 * cols, 4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name, p in zip(axes.flat, names, points, strict=False):
        ax.axis("on")
        sc = ax.scatter(p[:, 0], p[:, 1], c=labels, cmap="tab10", s=2, alpha=0.6)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.colorbar(sc, ax=axes.ravel().tolist(), ticks=range(10), label="digit")
    fig.savefig(path, dpi=110)
