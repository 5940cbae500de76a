"""PRNG keys: one root per model seed and one per data seed, split once by purpose.

Each root is the seed's key folded with its own tag, so a model seed and a data seed of
equal value still give unrelated keys (with jax's partitionable threefry,
``split(k, n)[i] == fold_in(k, i)``: splitting ``key(seed)`` for both would reuse keys).
Inside training, step s uses ``fold_in(key, s)``: no key is carried through the loop, so
a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import jax

MODEL_TAG, DATA_TAG, TEST_TAG = 0x4D4F44, 0x44415441, 0x54455354  # "MOD", "DATA", "TEST"


def model_keys(seed: int) -> dict:
    """One root key per model seed, split once by purpose: init, train, eval, sample."""
    root = jax.random.fold_in(jax.random.key(seed), MODEL_TAG)
    init, train, evaluate, sample = jax.random.split(root, 4)
    return {"init": init, "train": train, "eval": evaluate, "sample": sample}


def data_keys(data_seed: int) -> dict:
    """Keys shared by every model that sees the same data: order and binarization from the
    data seed; the test set's one binarization is fixed for every run (any data seed), so
    test numbers are comparable across runs."""
    perm, binarize = jax.random.split(jax.random.fold_in(jax.random.key(data_seed), DATA_TAG))
    test = jax.random.fold_in(jax.random.key(0), TEST_TAG)
    return {"perm": perm, "binarize": binarize, "test": test}
