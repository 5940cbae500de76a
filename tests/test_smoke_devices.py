"""Smoke matrix, several devices: the cells of ``tests/test_smoke.py`` (same checks, same
follow-up commands) on simulated CPU devices and on two local processes.

| cell  | devices         | kinds  | latents  | command / other axes                    |
|-------|-----------------|--------|----------|-----------------------------------------|
| dev3  | 3, one process  | ae+vae | 2        | latent_sweep, --archs conv: two conv    |
|       |                 |        |          | groups, each padded to 3 members (with  |
|       |                 |        |          | collectives between devices, such steps |
|       |                 |        |          | deadlock); cosine schedule,             |
|       |                 |        |          | --vae-likelihood gaussian; read back by |
|       |                 |        |          | prior, recon and jaxae.load             |
| dev8  | 8, one process  | ae+vae | 1, 2, 64 | latent_sweep, 6 members padded to 8,    |
|       |                 |        |          | sample scores (the AE mixture fit)      |
| hosts | 2 processes x 2 | vae    | 2        | jaxae.train (one model replicated on 4  |
|       |                 |        |          | devices), read back in one process (the |
|       |                 |        |          | scatter and manifold of the latents     |
|       |                 |        |          | themselves); the same command again:    |
|       |                 |        |          | both processes refuse                   |

A sweep on 2 processes x 2 devices is in ``tests/test_hosts.py`` (against one process)
and ``tests/test_hardening.py`` (a signal to one process).

The follow-up commands of dev3/dev8 run with the same device count as training (a user
reading a run on the machine that trained it); those of ``hosts`` in one process with
one device (a run saved by several processes restores anywhere).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import test_smoke as smoke
from helpers import ROOT

DEVICE_CELLS = {
    "dev3": (3, [
        "--kinds", "ae", "vae", "--latents", "2", "--archs", "conv",
        "--lr-schedule", "cosine", "--vae-likelihood", "gaussian", "--quality-samples", "0",
    ]),
    "dev8": (8, [
        "--kinds", "ae", "vae", "--latents", "1", "2", "64", "--quality-samples", "200",
    ]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DEVICE_CELLS))
def test_device_cell(name, tmp_path, classifier_dir):
    from jaxae import quality

    devices, axes = DEVICE_CELLS[name]
    cell = smoke.Cell(name)
    axes, clf = list(axes), None
    if axes[axes.index("--quality-samples") + 1] != "0":
        clf = quality.default_path(classifier_dir, "mnist")
        axes += ["--classifier", str(clf)]
    argv = smoke.sweep_argv(tmp_path, name, *axes)
    p = smoke.train(cell, argv, devices=devices, expect=["test  ", "mean ± std"])
    ckpt = tmp_path / "m" / name
    if p.returncode == 0 or (ckpt / "results.json").exists():
        # what depends on the device count: stacking, padding, sheets and test_metrics
        conv = {"modes": ("prior", "recon"), "evaluate": False} if name == "dev3" else {}
        conv = {"modes": ("prior", "scatter")} if name == "dev8" else conv
        smoke.follow_ups(
            cell, ckpt, tmp_path, sweep=True, classifier=clf, devices=devices,
            quality=200 if clf else 0, **conv,
        )  # fmt: skip
    cell.done()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(argv):
    """(return codes, outputs) of ``python -m ARGV`` on 2 local processes x 2 devices."""
    hosts = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", *argv, *hosts, "--process-id", str(i)],
            cwd=ROOT,
            env={**os.environ, **smoke.env_for(2)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=smoke.TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], logs


def test_two_processes_cell(tmp_path):
    """One model on 2 processes x 2 devices (its state replicated on every device of both
    processes), read back in one process; the same command again, without --resume:
    process 0 refuses in one line and process 1 stops too instead of waiting for it."""
    cell = smoke.Cell("hosts")
    argv = smoke.sweep_argv(tmp_path, "x")  # the output flags
    out = argv[argv.index("--models-dir") :]
    argv = ["jaxae.train", "--run", "one", "--latent", "2", *smoke.SMALL, *out]
    codes, logs = _two_processes(argv)
    for i, (code, (o, e)) in enumerate(zip(codes, logs, strict=True)):
        cell.check_ok([*argv, "--process-id", str(i)], code, o, e, ["test  "] if i == 0 else [])
    if codes == [0, 0]:
        smoke.follow_ups(cell, tmp_path / "m" / "one", tmp_path, sweep=False)
    codes, logs = _two_processes(argv)
    for i, (code, (o, e)) in enumerate(zip(codes, logs, strict=True)):
        cell.check_refused([*argv, "--process-id", str(i)], code, o, e)
    assert "already exists" in logs[0][1] and "process 0 refused" in logs[1][1], logs
    cell.done()
