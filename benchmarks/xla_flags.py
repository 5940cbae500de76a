"""Does an XLA:CPU library switch speed up the sweep's step? (a benchmark, not a test)

    python -m benchmarks.xla_flags            # 36 members, every switch, ~15 min on 2 cores
    python -m benchmarks.xla_flags --members 6

Each switch runs in a fresh process (XLA reads ``XLA_FLAGS`` once, at start-up) that
prints the steady-state member-examples/s of the latent sweep's step (latents 2..64 x
seeds), best of 2 x 100 steps, and its % of the matmul peak measured in that process.
The baseline (no flag) runs first and last, to show the drift of the shared machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

FLAGS = (
    "",
    "--xla_cpu_use_xnnpack=false",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_experimental_ynn_fusion_type=dot",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_fusion_type=dot",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "",
)


def measure(members: int) -> str:
    """One line: the step's steady-state speed under this process's XLA_FLAGS."""
    import jax.numpy as jnp

    from benchmarks.run import (
        HIDDEN,
        LATENTS,
        _program_speed,
        latent_members,
        peak_gflops,
        train_flops,
    )
    from jaxae.config import SweepConfig, TrainConfig
    from jaxae.runner import load_images
    from jaxae.sweep import sweep_program

    images = jnp.asarray(load_images("mnist", "train"))
    ms = latent_members(members)
    peak = peak_gflops()
    prog = sweep_program(SweepConfig(ms, TrainConfig()))
    best = max(_program_speed(prog, images, steps=100, batch=128) * members for _ in range(2))
    gflops = best * train_flops(784, HIDDEN, max(LATENTS)) / 1e9
    return (
        f"{os.environ.get('XLA_FLAGS', '')!r} m={members} peak {peak:.1f} -> {best:.0f} "
        f"member-ex/s = {100 * gflops / peak:.1f}% of peak ({gflops:.1f} GFLOP/s)"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.xla_flags",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--members", type=int, default=36, help="sweep members (default 36)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.one:
        print(measure(args.members), flush=True)
        return 0
    for flags in FLAGS:
        env = {**os.environ, "XLA_FLAGS": flags}
        cmd = [sys.executable, "-m", "benchmarks.xla_flags", "--one", "--members"]
        cmd.append(str(args.members))
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = (r.stdout or r.stderr).strip().splitlines()
        print(lines[-1] if lines else f"{flags!r}: no output (exit {r.returncode})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
