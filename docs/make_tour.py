"""Writes docs/tour.ipynb from the cells below; tests/test_notebook.py runs it in CI.

    python docs/make_tour.py            # cells only
    python docs/make_tour.py --execute  # with outputs (run in a temporary folder)
"""

import pathlib
import sys
import tempfile

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    (
        "md",
        """# A tour of jaxae

Four models (a VAE and an AE at latent sizes 2 and 8) trained **as one compiled program**,
then loaded back, sampled and plotted. About a minute on two CPU cores: three epochs of
MNIST, one hidden layer of 256 units. The same code runs unchanged on a GPU or TPU.""",
    ),
    (
        "code",
        """import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxae
from jaxae.config import grid

print("jaxae", jaxae.__version__, "| jax", jax.__version__, "|", jax.devices())""",
    ),
    (
        "md",
        """## A sweep is a list of members

`grid` makes every combination of the axes' values. Members with the same structure
(kind, likelihood, widths) are stacked and advanced by one `jax.vmap`-ed step; different
latent sizes are padded with a mask, so each member still trains like a standalone model.""",
    ),
    (
        "code",
        """base = jaxae.ModelConfig(hidden=(256,))
members = grid(base, {"kind": ["vae", "ae"], "latent": [2, 8]}, seeds=1)
train = jaxae.TrainConfig(epochs=3)
sweep = jaxae.SweepConfig(members, train)
[m.name for m in sweep.members]""",
    ),
    (
        "code",
        """result, prog = jaxae.fit_sweep(sweep, "tour", overwrite=True)
test = result["test"]
for name, loss, mse in zip(result["members"], test["loss"], test["mse"], strict=True):
    print(f"{name:28s} test loss {loss:8.3f}   MSE/pixel {mse:.4f}")
print(f"{result['timing']['member_examples_per_s']:,.0f} member-examples/s")""",
    ),
    (
        "md",
        """## Load it back and generate

`jaxae.load` reads the checkpoint in `models/tour`; every member has `encode`, `decode` and
`reconstruct`. Decoding draws from N(0, I): a VAE was trained for that, an AE was not.""",
    ),
    (
        "code",
        """run = jaxae.load("models/tour")
z8 = jax.random.normal(jax.random.key(0), (8, 8))
fig, axes = plt.subplots(len(run.members), 8, figsize=(8, 1.2 * len(run.members)))
for i, m in enumerate(run.members):
    images = run.decode(i, z8[:, : m.model.latent])
    for ax, im in zip(axes[i], np.asarray(images), strict=True):
        ax.imshow(im[..., 0], cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    axes[i, 0].set_title(m.name, fontsize=7, loc="left")
fig.tight_layout()""",
    ),
    (
        "code",
        """x, targets, labels = run.test_set(0)
vae2 = next(i for i, m in enumerate(run.members) if m.model.kind == "vae" and m.model.latent == 2)
codes = np.asarray(run.encode(vae2, x[:2000]))
fig, ax = plt.subplots(figsize=(4.5, 4))
points = ax.scatter(codes[:, 0], codes[:, 1], c=labels[:2000], cmap="tab10", s=3)
fig.colorbar(points, label="digit")
ax.set_title("2-d VAE: posterior means of test digits")
codes.shape""",
    ),
    (
        "md",
        """Next: `python -m experiments.latent_sweep` for the full question-1 sweep,
`tensorboard --logdir runs/` for the curves, images and each member's hyperparameters
(HParams tab).""",
    ),
]


def main() -> None:
    cells = [new_markdown_cell(t) if k == "md" else new_code_cell(t) for k, t in CELLS]
    nb = new_notebook(cells=cells)
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["kernelspec"] = kernel
    if "--execute" in sys.argv:
        from nbclient import NotebookClient

        with tempfile.TemporaryDirectory() as tmp:
            NotebookClient(nb, timeout=600, resources={"metadata": {"path": tmp}}).execute()
    path = pathlib.Path(__file__).with_name("tour.ipynb")
    nbformat.write(nb, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
