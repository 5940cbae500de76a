"""Thin tensorboardX layer: one writer per member, plus a JSON-lines copy of the scalars.

Layout: ``runs/<run>/<member>/`` (events file and ``scalars.jsonl``), so TensorBoard
overlays the members' curves. A single-model run has one member named ``.``.

Each member's writer also records the member's hyperparameters as an HParams session
(``config.hparams``); TensorBoard's HParams dashboard then tabulates, filters and plots
the members by latent size, beta or seed, beside their scalars (test/loss, ...). The
records go into the member's own events file (not ``add_hparams``, which would make a
timestamped folder per call).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams as hparams_summary

from jaxae.plots import tile

IMAGE_MEMBERS = 48  # the most members whose image grids are logged (and sheet panels)


def representatives(configs: list[dict], most: int = IMAGE_MEMBERS) -> list[int]:
    """Indices of the members to show: all when there are at most ``most``, else the first
    of each configuration (its dict without ``"seed"``), at most ``most``, so image work
    does not grow with the seeds of a large sweep."""
    if len(configs) <= most:
        return list(range(len(configs)))
    seen, out = set(), []
    for i, c in enumerate(configs):
        key = tuple(sorted((k, v) for k, v in c.items() if k != "seed"))
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out[:most]


def member_dir(name: str) -> str:
    """A folder name for a member (``kind,latent=8,beta=1,seed=0`` stays readable)."""
    return name.replace("/", "_").replace(" ", "")


class Summaries:
    """Scalars and images for M members; values are arrays with a trailing member axis."""

    def __init__(self, log_dir, names: list[str], hparams: list[dict] | None = None, enabled=True):
        """One writer per member under ``log_dir``; ``enabled=False`` writes nothing (the
        processes of a multi-host run other than process 0).

        Args:
            hparams: one {name: str | bool | number} per member, recorded as its HParams
                session (``config.hparams`` builds them).
        """
        self.dirs = [
            Path(log_dir) / member_dir(n) if len(names) > 1 else Path(log_dir) for n in names
        ]
        self.writers, self.jsonl, self._pending = [], [], []
        # image grids of every member up to 48, then of each configuration's first seed
        self.shown = representatives(hparams or [{"member": n} for n in names])
        # image grids are tiled and PNG-encoded on a worker thread, off the training path
        self._images = ThreadPoolExecutor(1, thread_name_prefix="jaxae-images")
        if not enabled:
            return
        self.writers = [SummaryWriter(str(d)) for d in self.dirs]
        self.jsonl = [open(d / "scalars.jsonl", "a") for d in self.dirs]  # noqa: SIM115
        for w, h in zip(self.writers, hparams or [], strict=True):
            _, start, end = hparams_summary(h, {})
            # No experiment record: TensorBoard then infers the experiment from all the
            # members' sessions and lists the hyperparameters that differ (kind, latent,
            # seed, ...) first, where one member's record would list them by name.
            w.file_writer.add_summary(start)
            w.file_writer.add_summary(end)

    def scalars(self, step: int, values: dict) -> None:
        for i, (w, f) in enumerate(zip(self.writers, self.jsonl, strict=True)):
            row = {k: float(np.atleast_1d(v)[i]) for k, v in values.items()}
            for k, v in row.items():
                w.add_scalar(k, v, step)
            f.write(json.dumps({"step": step, **row}) + "\n")
            f.flush()

    def images(self, step: int, images: dict) -> None:
        """images: name -> (M, n, H, W, C) floats in [0, 1] host arrays; logged as one grid
        per shown member (``representatives``) by a worker thread (``close`` waits for it;
        its errors surface there)."""
        if not self.writers:
            return
        for f in [f for f in self._pending if f.done()]:
            f.result()  # a write that failed raises here, at the next epoch
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._images.submit(self._write_images, step, images))

    def _write_images(self, step: int, images: dict) -> None:
        for name, batch in images.items():
            batch = np.asarray(batch)
            for i in self.shown:
                grid = np.nan_to_num(tile(batch[i]))  # a dropped member may hold NaNs
                self.writers[i].add_image(name, grid, step, dataformats="HWC")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def epoch_means(self, start: int, stop: int) -> dict:
        """Train means over logged steps in (start, stop], as {name: (M,)}; {} if none."""
        per_member = []
        for d in self.dirs:
            rows = [r for r in read_scalars(d) if start < r["step"] <= stop and "train/loss" in r]
            if not rows:
                return {}
            keys = [k for k in rows[0] if k.startswith("train/")]
            per_member.append({k[6:]: np.mean([r[k] for r in rows]) for k in keys})
        return {k: np.array([m[k] for m in per_member]) for k in per_member[0]}

    def close(self) -> None:
        self._images.shutdown(wait=True)
        for f in self._pending:
            f.result()  # an image that failed to write raises here
        for w, f in zip(self.writers, self.jsonl, strict=True):
            w.close()
            f.close()


def read_scalars(member_dir) -> list[dict]:
    """The JSON-lines scalars of one member folder."""
    with open(Path(member_dir) / "scalars.jsonl") as f:
        return [json.loads(line) for line in f]
