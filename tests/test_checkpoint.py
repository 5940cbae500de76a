"""Tests for jaxae.checkpoint: round trip, retention, integrity, wrong model, crash safety."""

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from etils import epath

from jaxae.checkpoint import Checkpointer, CheckpointError, flat_leaves, resolve

# A failed restore must not leave orbax's abandoned-read reports behind (see checkpoint.py).
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = {"model": {"latent": 8, "hidden": [32]}, "lr": 1e-3, "name": "ae"}


def make_state(hidden=32, latent=8, inputs=784, seed=0):
    """Flax-like {"params", "opt_state", "step"} for an MLP; Adam state after one update."""
    k0, k1, k2 = jax.random.split(jax.random.key(seed), 3)
    params = {
        "Dense_0": {
            "kernel": jax.random.normal(k0, (inputs, hidden)) * 0.05,
            "bias": jnp.zeros((hidden,)),
        },
        "Dense_1": {
            "kernel": jax.random.normal(k1, (hidden, latent)) * 0.05,
            "bias": jnp.zeros((latent,), jnp.bfloat16),
        },
    }
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    grads = jax.tree.map(lambda p: jax.random.normal(k2, p.shape, p.dtype), params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return {"params": params, "opt_state": opt_state, "step": jnp.array(7, jnp.int32)}


def abstract(state):
    """Abstract target the way callers build it."""
    return jax.eval_shape(lambda: state)


def assert_bitwise_equal(a, b):
    """Same tree structure and bitwise-identical leaves with the same dtypes."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def biggest_file(folder):
    """Largest regular file under a folder."""
    files = [p for p in pathlib.Path(folder).rglob("*") if p.is_file() and not p.is_symlink()]
    return max(files, key=lambda p: p.stat().st_size)


def saved_run(tmp_path, step=5):
    """A run folder holding one finalized step of make_state()."""
    state = make_state()
    with Checkpointer(tmp_path / "run") as ck:
        ck.save(step, state, CONFIG, wait=True)
    return tmp_path / "run", state


# ---------------------------------------------------------------------------------------------
# Round trip and listing


def test_round_trip_from_abstract_target(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path / "run") as ck:
        ck.save(5, state, CONFIG)  # async; restore must still see it
        restored = ck.restore(abstract(state))
        assert ck.read_config() == CONFIG
        assert ck.latest_step() == 5
    assert_bitwise_equal(restored, state)
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)


def _held(monkeypatch, name: str, gate: threading.Event) -> list:
    """Makes ``jaxae.checkpoint.<name>`` wait for ``gate`` (then run as before); returns
    the threads it ran on."""
    from jaxae import checkpoint

    real, threads = getattr(checkpoint, name), []

    def held(tree):
        threads.append(threading.current_thread())
        assert gate.wait(30)
        return real(tree)

    monkeypatch.setattr(checkpoint, name, held)
    return threads


def test_save_returns_with_its_own_copy_and_writes_in_the_background(tmp_path, monkeypatch):
    # The training loop donates its state to the next step right after ``save`` returns:
    # the arrays must already be copied, and the digests and writes happen on another
    # thread. The digests are held back until the caller has overwritten its array.
    gate = threading.Event()
    threads = _held(monkeypatch, "tree_digests", gate)
    w = np.arange(100_000, dtype=np.float32)
    with Checkpointer(tmp_path / "run") as ck:
        ck.save(1, {"w": w}, CONFIG)
        w[:] = -1.0  # what the next train step does to a donated buffer
        gate.set()
        restored = ck.restore({"w": jax.ShapeDtypeStruct(w.shape, w.dtype)})
    assert threads and threads[0] is not threading.main_thread()
    np.testing.assert_array_equal(restored["w"], np.arange(100_000, dtype=np.float32))


def test_a_jax_array_donated_after_save_is_saved_as_it_was(tmp_path, monkeypatch):
    # On the CPU the host arrays are views of the jax buffers: a donation must not write
    # into a buffer that a pending save still reads (the digests are held back meanwhile).
    gate = threading.Event()
    _held(monkeypatch, "tree_digests", gate)
    x = jnp.arange(100_000, dtype=jnp.float32)
    with Checkpointer(tmp_path / "run") as ck:
        ck.save(1, {"w": x}, CONFIG)
        y = jax.jit(lambda a: a * 0 - 1, donate_argnums=0)(x)
        gate.set()
        restored = ck.restore({"w": jax.ShapeDtypeStruct(x.shape, x.dtype)})
    assert float(y[0]) == -1.0
    np.testing.assert_array_equal(restored["w"], np.arange(100_000, dtype=np.float32))


def test_a_borrowed_save_takes_its_arrays_on_the_writer_thread_before_released(
    tmp_path, monkeypatch
):
    gate = threading.Event()
    threads = _held(monkeypatch, "_host_arrays", gate)
    w = np.arange(100_000, dtype=np.float32)
    with Checkpointer(tmp_path / "run") as ck:
        ck.save(1, {"w": w}, CONFIG, borrow=True)  # returns before the copy is made
        threading.Timer(0.3, gate.set).start()
        ck.released()
        w[:] = -1.0
        restored = ck.restore({"w": jax.ShapeDtypeStruct(w.shape, w.dtype)})
    assert threads and threads[0] is not threading.main_thread()
    np.testing.assert_array_equal(restored["w"], np.arange(100_000, dtype=np.float32))


def test_a_save_of_jax_arrays_makes_no_host_copy_of_them(tmp_path):
    # The writer reads views of the jax buffers on the CPU; neither it nor orbax copies
    # them (orbax deep-copies numpy arrays before a background write unless told not to).
    # numpy's allocations are traced by tracemalloc, in every thread; XLA's are not.
    import tracemalloc

    state = {f"w{i}": jnp.full((1_000_000,), float(i)) for i in range(16)}  # 64 MB
    size = sum(a.nbytes for a in state.values())
    jax.block_until_ready(state)
    with Checkpointer(tmp_path / "run") as ck:
        tracemalloc.start()
        try:
            ck.save(1, state, CONFIG, wait=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        restored = ck.restore(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state))
    assert peak < size / 4, f"a save allocated {peak / 1e6:.0f} MB of numpy for {size / 1e6:.0f} MB"
    assert_bitwise_equal(restored, state)


def test_restore_into_concrete_target_and_python_scalar_step(tmp_path):
    state = make_state()
    state["step"] = 7  # a Python int is saved like jax.eval_shape describes it (int32)
    with Checkpointer(tmp_path / "run") as ck:
        ck.save(1, state, CONFIG, wait=True)
        restored = ck.restore(abstract(state))
        again = ck.restore(jax.tree.map(jnp.zeros_like, make_state()))
    assert int(restored["step"]) == 7 and np.asarray(restored["step"]).dtype == np.int32
    assert_bitwise_equal(again["params"], state["params"])


def test_relative_directory_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Checkpointer("models/run") as ck:
        assert ck.directory == (tmp_path / "models" / "run").resolve()
        assert ck.directory.is_dir()


def test_latest_step_and_max_to_keep(tmp_path):
    small = {"w": jnp.arange(4.0)}
    with Checkpointer(tmp_path / "run", max_to_keep=2) as ck:
        assert ck.latest_step() is None and ck.all_steps() == []
        for step in (10, 20, 30, 40):
            ck.save(step, small, {"step": step})
        ck.wait()
        assert ck.all_steps() == [30, 40]
        assert ck.latest_step() == 40
        assert ck.read_config(30) == {"step": 30}
        with pytest.raises(CheckpointError, match="already has step 40"):
            ck.save(40, small, {})
        with pytest.raises(CheckpointError, match="no checkpoint at .*10"):
            ck.restore(abstract(small), step=10)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["30", "40"]


def test_resolve_run_dir_and_step_dir(tmp_path):
    run, _ = saved_run(tmp_path, step=1200)
    assert resolve(run) == (run.resolve(), None)
    assert resolve(run / "1200") == (run.resolve(), 1200)
    assert resolve(str(run / "1200" / ".." / "1200")) == (run.resolve(), 1200)


def _orbax_tmp_folder(final: pathlib.Path) -> pathlib.Path:
    """The unfinished folder orbax's CheckpointManager makes for ``final``, made by orbax:
    the temporary-path class it picks for a local folder, with its own naming."""
    cls = ocp.path.atomicity_defaults.get_default_temporary_path_class(final)
    return pathlib.Path(asyncio.run(cls.from_final(epath.Path(final)).create()))


def test_unfinished_step_folders_are_never_listed(tmp_path):
    run, state = saved_run(tmp_path, step=5)
    tmp = _orbax_tmp_folder(run / "9")
    # laid out as a save killed mid-write leaves it: each item in its own tmp folder
    items = [_orbax_tmp_folder(tmp / item) for item in ("state", "config", "digests")]
    assert tmp.name == "9.orbax-checkpoint-tmp" and tmp.parent == run
    assert items[0].name == "state.orbax-checkpoint-tmp" and items[0].is_dir()
    with Checkpointer(run, create=False) as ck:
        assert ck.all_steps() == [5] and ck.latest_step() == 5
        assert_bitwise_equal(ck.restore(abstract(state)), state)
    with pytest.raises(CheckpointError, match="unfinished save"):
        resolve(tmp)


# ---------------------------------------------------------------------------------------------
# Missing paths


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match=f"no checkpoint at {missing}"):
        Checkpointer(missing, create=False)
    with pytest.raises(CheckpointError, match=f"no checkpoint at {missing}"):
        resolve(missing)
    assert not missing.exists()


def test_folder_without_steps(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint steps"):
        resolve(tmp_path / "empty")
    with Checkpointer(tmp_path / "empty", create=False) as ck:
        with pytest.raises(CheckpointError, match="no checkpoint at"):
            ck.restore({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
        with pytest.raises(CheckpointError, match="no checkpoint at"):
            ck.read_config()


# ---------------------------------------------------------------------------------------------
# Integrity


def test_flipped_byte_in_array_data_is_detected(tmp_path):
    run, state = saved_run(tmp_path)
    data = biggest_file(run / "5" / "state")
    # The biggest file is OCDBT array data (the 784x32 kernels), not metadata.
    assert data.stat().st_size > 784 * 32 * 4 // 2
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with Checkpointer(run, create=False) as ck:
        with pytest.raises(
            CheckpointError, match=f"checkpoint {run / '5'} is (corrupt|unreadable)"
        ):
            ck.restore(abstract(state))


def test_flipped_byte_is_caught_by_digests_not_by_orbax(tmp_path):
    """Orbax restores the damaged data silently; only the sha256 check stops it."""
    run, state = saved_run(tmp_path)
    data = biggest_file(run / "5" / "state")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with Checkpointer(run, create=False) as ck:
        with pytest.raises(CheckpointError, match="is corrupt: leaf .* fails its sha256 check"):
            ck.restore(abstract(state))


def test_truncated_data_file_surfaces_as_checkpoint_error(tmp_path):
    run, state = saved_run(tmp_path)
    data = biggest_file(run / "5" / "state")
    data.write_bytes(data.read_bytes()[:100])
    with Checkpointer(run, create=False) as ck:
        with pytest.raises(CheckpointError, match=f"checkpoint {run / '5'} is unreadable") as err:
            ck.restore(abstract(state))
    assert err.value.__cause__ is not None and "\n" not in str(err.value)


def test_damaged_digests_surface_as_checkpoint_error(tmp_path):
    run, state = saved_run(tmp_path)
    (run / "5" / "digests" / "metadata").write_text("{not json")
    with Checkpointer(run, create=False) as ck:
        with pytest.raises(CheckpointError, match=f"checkpoint {run / '5'} is unreadable"):
            ck.restore(abstract(state))
        assert ck.read_config() == CONFIG


def test_digests_record_shape_and_dtype(tmp_path):
    run, _ = saved_run(tmp_path)
    digests = json.loads((run / "5" / "digests" / "metadata").read_text())
    kernel = digests["params/Dense_0/kernel"]
    assert kernel["shape"] == [784, 32] and kernel["dtype"] == "float32"
    assert len(kernel["sha256"]) == 64
    assert digests["params/Dense_1/bias"]["dtype"] == "bfloat16"
    assert "opt_state/0/mu/Dense_0/kernel" in digests


def test_leaf_paths_of_a_tuple_of_groups():
    # the digests of saved checkpoints are keyed by these strings: dict keys, sequence
    # indices and namedtuple field names (Adam's ScaleByAdamState), joined by "/"
    names = list(flat_leaves((make_state(), {"step": np.int32(1)})))
    layer = ["Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel"]
    adam = ["opt_state/0/count"] + [f"opt_state/0/{m}/{k}" for m in ("mu", "nu") for k in layer]
    assert names == [f"0/{k}" for k in adam + [f"params/{k}" for k in layer] + ["step"]] + [
        "1/step"
    ]


# ---------------------------------------------------------------------------------------------
# Wrong model


def test_wrong_model_names_the_leaf(tmp_path):
    run, _ = saved_run(tmp_path)
    with Checkpointer(run, create=False) as ck:
        with pytest.raises(CheckpointError) as err:
            ck.restore(abstract(make_state(inputs=1024)))
        with pytest.raises(CheckpointError, match="params/Dense_0/bias is .64,. here but .32,."):
            ck.restore(abstract(make_state(hidden=64)))
    msg = str(err.value)
    assert f"checkpoint {run / '5'} was written for a different model: " in msg
    assert "params/Dense_0/kernel is (1024, 32) here but (784, 32) in the checkpoint" in msg
    assert "\n" not in msg


def test_wrong_dtype_and_missing_leaf(tmp_path):
    run, state = saved_run(tmp_path)
    wrong = abstract(state)
    wrong["step"] = jax.ShapeDtypeStruct((), jnp.float32)
    extra = abstract(state)
    extra["ema"] = jax.ShapeDtypeStruct((3,), jnp.float32)
    with Checkpointer(run, create=False) as ck:
        with pytest.raises(CheckpointError, match="step is float32 here but int32"):
            ck.restore(wrong)
        with pytest.raises(CheckpointError, match="ema is in the target but not in the checkpoint"):
            ck.restore(extra)


# ---------------------------------------------------------------------------------------------
# Crash during save

CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import numpy as np
    from jaxae.checkpoint import Checkpointer

    run = sys.argv[1]
    ck = Checkpointer(run)
    ck.save(1, {"w": np.arange(10, dtype=np.float32)}, {"step": 1}, wait=True)
    rng = np.random.default_rng(0)
    big = {"w": np.zeros(10, np.float32)}
    big["big"] = [rng.random(12_500_000, dtype=np.float32) for _ in range(3)]
    saved = threading.Event()

    def tmp_bytes():
        total = 0
        for folder, _, files in os.walk(run):
            if ".orbax-checkpoint-tmp" in folder:
                for f in files:
                    try:
                        total += os.path.getsize(os.path.join(folder, f))
                    except OSError:
                        pass
        return total

    def killer():
        deadline = time.time() + 30
        while tmp_bytes() < 1_000_000 and not saved.is_set() and time.time() < deadline:
            time.sleep(0.001)
        print("killing", sorted(os.listdir(run)), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=killer, daemon=True).start()
    ck.save(2, big, {"step": 2})
    ck.wait()
    print("SAVED2", flush=True)
    saved.set()
    time.sleep(60)
    """
)


def test_crash_during_save_keeps_previous_step(tmp_path):
    # The 150 MB step 2 is killed once its tmp folder holds 1 MB: mid-write (measured on
    # the 2-core CPU: killed at 2-6 MB, 2 s into the script).
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(run)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "killing" in proc.stdout and "SAVED2" not in proc.stdout, proc.stdout
    (tmp,) = [p for p in run.iterdir() if ".orbax-checkpoint-tmp" in p.name]
    partial = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    assert tmp.name == "2.orbax-checkpoint-tmp" and 1_000_000 < partial < 100_000_000, partial
    assert sorted(p.name for p in run.iterdir()) == ["1", tmp.name]
    with Checkpointer(run, create=False) as ck:
        assert ck.all_steps() == [1] and ck.latest_step() == 1
        restored = ck.restore({"w": jax.ShapeDtypeStruct((10,), jnp.float32)})
        np.testing.assert_array_equal(restored["w"], np.arange(10, dtype=np.float32))
        assert ck.read_config() == {"step": 1}
        # A resumed run saves the same step again: orbax replaces the unfinished folder.
        ck.save(2, {"w": jnp.ones(10)}, {"step": 2}, wait=True)
        assert ck.latest_step() == 2
    assert not any(".orbax-checkpoint-tmp" in p.name for p in run.iterdir())
