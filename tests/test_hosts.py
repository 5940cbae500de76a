"""Several hosts on one machine: 2 processes x 2 CPU devices (gloo) against 1 process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from helpers import ROOT, run_cli

from jaxae.summary import read_scalars

SWEEP = ["experiments.latent_sweep", "--kinds", "vae", "ae", "--latents", "2", "4"]
SWEEP += ["--seeds", "1", "--hidden", "16", "--epochs", "1", "--train-size", "640"]
SWEEP += ["--no-progress", "--quality-samples", "200"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_and_restore_in_one(tmp_path):
    out = ["--models-dir", str(tmp_path / "m2"), "--runs-dir", str(tmp_path / "r2")]
    hosts = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", *SWEEP, *out, *hosts, "--process-id", str(i)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, logs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    one = run_cli(*SWEEP, "--models-dir", str(tmp_path / "m1"), "--runs-dir", str(tmp_path / "r1"))
    assert one.returncode == 0, one.stderr[-3000:]

    def members(d):
        doc = json.loads((tmp_path / d / "latent_sweep" / "results.json").read_text())
        return doc["members"]

    two, single = members("m2"), members("m1")
    assert [m["member"] for m in two] == [m["member"] for m in single]
    for key in ("test_loss", "test_recon", "test_kl", "test_mse", "active_units"):
        np.testing.assert_allclose([m[key] for m in two], [m[key] for m in single], rtol=1e-4)
    # process 0 alone wrote the summaries (two writers would append every row twice)
    for d in (tmp_path / "r1" / "latent_sweep").iterdir():
        rows = read_scalars(tmp_path / "r2" / "latent_sweep" / d.name)
        assert len(rows) == len(read_scalars(d)) > 0, d.name
    # the 4-device checkpoint restores in this 1-device process, every byte verified
    from jaxae.restore import load

    run = load(tmp_path / "m2" / "latent_sweep")
    got = run.test_metrics()["loss"]
    np.testing.assert_allclose(got, [m["test_loss"] for m in single], rtol=1e-4)
