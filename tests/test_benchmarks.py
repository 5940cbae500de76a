"""The benchmark's own arithmetic and measurements (the benchmarks themselves are not tests)."""

import pathlib
import subprocess
import sys

import numpy as np

from benchmarks.run import conv_train_flops, own_peak_rss_mb, train_flops


def test_train_flops_by_hand():
    # VAE 784-512-256-20: encoder, mean and log-variance heads, decoder; x2 per MAC, x3 with
    # the backward pass.
    macs = 784 * 512 + 512 * 256 + 2 * 256 * 20 + 20 * 256 + 256 * 512 + 512 * 784
    assert train_flops(784, (512, 256), 20) == 6 * macs
    assert train_flops(784, (512, 256), 20, kind="ae") == 6 * (macs - 256 * 20)


def test_conv_flops_by_hand():
    # 28x28x1 -> conv 3x3/2 -> 14x14x32 -> conv 3x3/2 -> 7x7x64 -> 256 -> mean, logvar (20);
    # decoder: 20 -> 256 -> 7x7x64 -> conv to 7x7x128 -> 14x14x32 -> conv to 14x14x4 -> 28x28
    enc = 14 * 14 * 9 * 1 * 32 + 7 * 7 * 9 * 32 * 64
    dec = 7 * 7 * 9 * 64 * 128 + 14 * 14 * 9 * 32 * 4
    dense = 7 * 7 * 64 * 256
    macs = enc + dec + 2 * dense + 256 * 20 * 2 + 20 * 256
    assert conv_train_flops((28, 28, 1), (256,), 20) == 6 * macs


def test_peak_rss_is_the_childs_own():
    big = np.ones(600 * 2**20, np.uint8)  # 600 MB resident in this (parent) process
    assert own_peak_rss_mb() > 600
    code = "from benchmarks.run import own_peak_rss_mb; print(own_peak_rss_mb())"
    root = pathlib.Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert float(out.stdout) < 300, out.stdout  # ru_maxrss would report the parent's > 600
    del big
