"""Orbax checkpoints of any array pytree, with a JSON config and per-leaf sha256 digests.

A run folder holds one sub-folder per step, as orbax's ``CheckpointManager`` lays them out::

    models/run/1200/              finalized step (orbax writes ``1200.orbax-checkpoint-tmp``
      _CHECKPOINT_METADATA          first and renames it once every item is on disk)
      state/                      StandardSave: OCDBT/zarr array data + _METADATA tree
      config/metadata             JsonSave of the config dict
      digests/metadata            JsonSave: leaf path -> {"sha256", "dtype", "shape"}

Orbax does not checksum array data (a flipped byte restores as wrong weights), so every
restore recomputes the digests and refuses a mismatch. Against a differing target orbax
casts dtypes silently, ignores the target shape of numpy leaves and raises a long ValueError
for jax leaves, so the saved shapes and dtypes are checked against the target first.
This module knows nothing about models; ``state`` is any pytree of jax/numpy arrays.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import pathlib
import sys
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxae import hosts

PyTree = Any

_SCALARS = (bool, int, float, complex, np.generic)


class _StateHandler(ocp.StandardCheckpointHandler):
    """orbax's standard handler, with two copies of the state fewer while it writes:

    - numpy leaves are written as they are, not deep-copied first: ``Checkpointer`` hands
      orbax host arrays that nothing writes to until the step is finalized (copies, or
      views of immutable jax buffers);
    - the arrays are stored uncompressed: TensorStore's compressed writes held most of
      another copy of the state in memory until the save ended, in the same time, where
      compression saved a few percent of the bytes, zero padding aside (measured in
      benchmarks/README.md, "A thousand members").

    Compressed checkpoints written before still restore (each array records its codec).
    """

    def __init__(self):
        super().__init__()
        keep = (int, float, bytes, np.number, jax.Array, str)
        registry = ocp.type_handlers.create_type_handler_registry(
            (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
            *[(t, ocp.type_handlers.get_type_handler(t)) for t in keep],
        )
        self._impl = ocp.PyTreeCheckpointHandler(
            type_handler_registry=registry, use_compression=False
        )


# the arguments that select ``_StateHandler`` (orbax picks an item's handler by its args)
@ocp.args.register_with_handler(_StateHandler, for_save=True)
class _StateSave(ocp.args.StandardSave):
    pass


@ocp.args.register_with_handler(_StateHandler, for_restore=True)
class _StateRestore(ocp.args.StandardRestore):
    pass


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, corrupt or was written for another model."""


# ---------------------------------------------------------------------------------------------
# Leaves, paths and digests


def flat_leaves(tree: PyTree) -> dict[str, Any]:
    """Flattens a pytree into an ordered dict of leaf path string -> leaf.

    Args:
      tree: any pytree.

    Returns:
      dict in jax flattening order, keyed by ``jax.tree_util.keystr(path, simple=True,
      separator="/")``: e.g. ``"params/Dense_0/kernel"``, ``"opt_state/0/mu/Dense_0/bias"``
      (a namedtuple field by its name, a sequence item by its index). The saved digests
      are keyed by these strings.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p, simple=True, separator="/"): x for p, x in flat}


def _as_arrays(state: PyTree) -> PyTree:
    """Turns Python/numpy scalar leaves into jax arrays.

    They then save as ``jax.eval_shape`` describes them (an int step becomes int32 rather
    than numpy's int64), so an abstract target matches the saved dtypes.
    """
    return jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, _SCALARS) else x, state)


def _spec(x: Any) -> tuple[tuple[int, ...], str]:
    """Returns (shape, dtype name) of an array, ShapeDtypeStruct or scalar."""
    if not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    return tuple(int(d) for d in x.shape), str(np.dtype(x.dtype))


def leaf_digest(x: Any) -> dict:
    """Digest of one host array: sha256 over dtype, shape and the raw bytes.

    Args:
      x: numpy array (a host copy), or a jax.Array (gathered from every process when
        it is not fully addressable, so every byte is hashed).

    Returns:
      ``{"sha256": hex, "dtype": "float32", "shape": [784, 256]}``.
    """
    shape, dtype = _spec(x)
    a = np.ascontiguousarray(hosts.to_host(x))
    h = hashlib.sha256(f"{dtype}{shape}".encode())
    h.update(a.reshape(-1).view(np.uint8))
    return {"sha256": h.hexdigest(), "dtype": dtype, "shape": list(shape)}


def _host_arrays(tree: PyTree) -> PyTree:
    """Every leaf as a numpy array that the caller's later writes cannot reach: a copy of a
    numpy leaf; of a jax leaf, a device-to-host copy or, on the CPU, a zero-copy view (a
    jax array is immutable, and a buffer with a live view is never donated in place)."""
    return jax.tree.map(lambda x: np.array(x) if isinstance(x, np.ndarray) else np.asarray(x), tree)


def _numpy_copies(tree: PyTree) -> PyTree:
    """``tree`` with a copy of every numpy leaf (jax leaves are immutable)."""
    return jax.tree.map(lambda x: np.array(x) if isinstance(x, np.ndarray) else x, tree)


def _views(tree: PyTree) -> bool:
    """True when some leaf shares its memory with a jax array (``_host_arrays`` on CPU)."""
    return any(isinstance(a, np.ndarray) and not a.flags.owndata for a in jax.tree.leaves(tree))


def tree_digests(tree: PyTree) -> dict[str, dict]:
    """Digests of every leaf of a pytree, computed from one host copy.

    Args:
      tree: pytree of jax/numpy arrays.

    Returns:
      dict leaf path -> ``leaf_digest`` of that leaf.
    """
    return {p: leaf_digest(x) for p, x in hosts.to_host(flat_leaves(tree)).items()}


# ---------------------------------------------------------------------------------------------
# Checks against the saved digests


def _show(spec: tuple[tuple[int, ...], str], other: tuple[tuple[int, ...], str]) -> str:
    """Formats a (shape, dtype) spec, naming the dtype only when the shapes agree."""
    return str(spec[0]) if spec[0] != other[0] else spec[1]


def _leaf_problem(path: str, x: Any, digests: dict[str, dict]) -> str | None:
    """Describes how one target leaf disagrees with the saved digests, or None."""
    if path not in digests:
        return f"{path} is in the target but not in the checkpoint"
    here = _spec(x)
    saved = (tuple(digests[path]["shape"]), digests[path]["dtype"])
    if here == saved:
        return None
    return f"{path} is {_show(here, saved)} here but {_show(saved, here)} in the checkpoint"


def structure_mismatch(target: PyTree, digests: dict[str, dict]) -> str | None:
    """Describes the first leaf where ``target`` and a saved tree disagree.

    Shallow leaves are checked first, so a changed layer is reported as
    ``params/Dense_0/kernel`` rather than as its Adam moment ``opt_state/0/mu/...``.

    Args:
      target: abstract or concrete pytree to restore into.
      digests: the checkpoint's saved digests (leaf path -> shape, dtype, sha256).

    Returns:
      None when paths, shapes and dtypes all match, else a short description such as
      ``"params/Dense_0/kernel is (784, 256) here but (784, 512) in the checkpoint"``.
    """
    leaves = flat_leaves(target)
    for path, x in sorted(leaves.items(), key=lambda kv: kv[0].count("/")):
        problem = _leaf_problem(path, x, digests)
        if problem:
            return problem
    extra = [path for path in digests if path not in leaves]
    return f"{extra[0]} is in the checkpoint but not in the target" if extra else None


def corrupt_leaf(tree: PyTree, digests: dict[str, dict]) -> str | None:
    """Returns the path of the first leaf whose sha256 differs from the saved digest.

    Args:
      tree: restored pytree (same structure as the saved one).
      digests: the checkpoint's saved digests.

    Returns:
      the failing leaf path, or None when every checkable leaf matches.
    """
    for path, d in tree_digests(tree).items():
        want = digests[path]["sha256"]
        if d["sha256"] is not None and want is not None and d["sha256"] != want:
            return path
    return None


# ---------------------------------------------------------------------------------------------
# Locating checkpoints on disk


def _finalized_steps(directory: pathlib.Path) -> list[int]:
    """Sorted steps whose folders orbax has finalized (tmp folders are never listed)."""
    return sorted(ocp.path.step.checkpoint_steps(directory))


def _is_step_dir(path: pathlib.Path) -> bool:
    """True for a finalized orbax step folder written by ``Checkpointer``."""
    return (
        path.name.isdigit() and (path / "state").is_dir() and ocp.path.step.is_path_finalized(path)
    )


def resolve(path: str | pathlib.Path) -> tuple[pathlib.Path, int | None]:
    """Splits a checkpoint path into its run folder and an optional step.

    Args:
      path: a run folder holding step sub-folders (``models/run``) or one step folder
        inside it (``models/run/1200``).

    Returns:
      ``(run_dir, step)``: absolute run folder, and the step, or None for a run folder.

    Raises:
      CheckpointError: the path is missing, is an unfinished save, or holds no steps.
    """
    p = pathlib.Path(path).expanduser().resolve()
    if not p.is_dir():
        raise CheckpointError(f"no checkpoint at {p}")
    if _is_step_dir(p):
        return p.parent, int(p.name)
    if ocp.path.step.TMP_DIR_SUFFIX in p.name:
        raise CheckpointError(f"no checkpoint at {p}: it is an unfinished save")
    if not _finalized_steps(p):
        raise CheckpointError(f"no checkpoint at {p}: the folder holds no checkpoint steps")
    return p, None


# ---------------------------------------------------------------------------------------------
# Checkpointer


def _why(e: BaseException) -> str:
    """One line naming the root cause of an exception (orbax wraps TensorStore errors)."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = str(e).strip().splitlines()
    msg = lines[0][:300] if lines else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _is_orbax_read_leak(unraisable: Any) -> bool:
    """True for the two reports a failed orbax restore leaves behind (see below)."""
    if getattr(unraisable.object, "__qualname__", "") == "_read_array_index_and_device_put":
        return True
    if not (
        isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"
    ):
        return False
    # Raised by asyncio when a finished TensorStore read calls back into the closed loop;
    # the frame that raised it may sit anywhere in the traceback, depending on the callback.
    tb = unraisable.exc_traceback
    while tb is not None:
        if tb.tb_frame.f_code.co_name in ("call_soon_threadsafe", "_check_closed"):
            return True
        tb = tb.tb_next
    return False


def _quiet_orbax_read_leaks() -> None:
    """Silences the reports of reads that orbax abandons when a restore fails.

    When one read fails, orbax 0.12 closes its event loop while sibling TensorStore reads
    are still in flight. Later, at some garbage collection or at exit, Python prints
    "Exception ignored in: None ... RuntimeError: Event loop is closed" for each read that
    completes, and "Exception ignored in <coroutine _read_array_index_and_device_put>" with
    a page of TensorStore spec for each abandoned coroutine (that coroutine catches
    ``BaseException``, ``GeneratorExit`` included). Installed only after a failed restore,
    this hook drops exactly those reports and passes every other one to the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_jaxae_quiet", False):
        return

    def hook(unraisable):
        if not _is_orbax_read_leak(unraisable):
            previous(unraisable)

    hook._jaxae_quiet = True
    sys.unraisablehook = hook


class Checkpointer:
    """Saves and restores steps of one run folder: ``state``, ``config``, ``digests``.

    Saves are asynchronous: ``save`` returns once it holds host arrays (or at once, with
    ``borrow``), and a background thread computes the digests and writes the step (one
    save in flight at a time). ``wait()`` or ``close()`` block until it is on disk and
    raise its error, if any. Only finalized
    steps are ever listed, so a crash during a save leaves the previous step as the latest.
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        max_to_keep: int = 3,
        create: bool = True,
        local: bool = False,
    ):
        """Opens (or creates) a run folder.

        Args:
          directory: run folder; relative paths are resolved to absolute ones.
          max_to_keep: number of most recent steps kept on disk (older ones are deleted).
          create: create the folder when missing; when False a missing folder raises.
          local: this process alone reads and writes it (with several processes, orbax
            otherwise waits for all of them at its barriers).

        Raises:
          CheckpointError: ``create`` is False and the folder does not exist.
        """
        self.directory = pathlib.Path(directory).expanduser().resolve()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint at {self.directory}")
        multi = {}
        if local and jax.process_count() > 1:
            me = jax.process_index()
            multi["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"local{me}"
            )
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create, **multi)
        handlers = {
            "state": _StateHandler(),
            "config": ocp.JsonCheckpointHandler(),
            "digests": ocp.JsonCheckpointHandler(),
        }
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        # with several processes orbax's save is collective (barriers, sharded writes), so
        # it stays on the calling thread; a single process writes in the background
        self._writer = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxae-checkpoint")
            if jax.process_count() == 1
            else None
        )
        self._pending: concurrent.futures.Future | None = None
        self._released = threading.Event()  # set: no save still reads the caller's arrays
        self._released.set()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def step_dir(self, step: int) -> pathlib.Path:
        """Returns the folder of one step (it may not exist)."""
        return self.directory / str(step)

    # -- writing ---------------------------------------------------------------------------

    def save(
        self, step: int, state: PyTree, config: dict, *, wait: bool = False, borrow: bool = False
    ) -> None:
        """Starts saving one step; returns once it holds host arrays the caller's later
        writes cannot reach (see ``_host_arrays``).

        Args:
          step: step number; must exceed every step already in the folder.
          state: pytree of jax/numpy arrays, e.g. ``{"params", "opt_state", "step"}``.
          config: JSON-serializable dict stored next to the arrays.
          wait: block until the step is finalized on disk.
          borrow: return at once and take the host arrays in the background too; the
            caller leaves its arrays untouched (no donation, no in-place write) until
            ``released()`` returns: after the host copy, or on the CPU, where the host
            arrays are views, after the write (a buffer donated meanwhile would need a
            second copy). The training loop evaluates meanwhile.

        Raises:
          CheckpointError: config is not JSON, the step is not newer than the latest, or
            orbax fails to start the save (or the previous save failed).
        """
        where = self.step_dir(step)
        try:
            json.dumps(config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {where}: config is not JSON ({_why(e)})") from e
        state = _as_arrays(state)
        if self._writer is None:  # orbax writes numpy leaves as they are: copies of them
            self._write(step, _numpy_copies(state), config)
        else:
            self._join()  # the previous save's error, if any, is raised here
            latest = max(self.all_steps(), default=None)
            if latest is not None and int(step) <= latest:
                raise self._not_newer(step, latest)
            if borrow:  # the writer thread takes the host arrays and sets the event
                self._released = threading.Event()
            else:
                state = _host_arrays(state)
            self._pending = self._writer.submit(self._write, step, state, config, finish=True)
        if wait:
            self.wait()

    def _not_newer(self, step: int, latest: int | None) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {self.step_dir(step)} was not written: {self.directory} already "
            f"has step {latest}"
        )

    def released(self) -> None:
        """Blocks until the pending save no longer needs the caller's arrays (``save``)."""
        self._released.wait()

    def _write(self, step: int, state: PyTree, config: dict, finish: bool = False) -> None:
        """Digests the arrays and hands them to orbax; ``finish``: wait until on disk.

        On the writer thread, a borrowed save first takes its host arrays."""
        if self._released.is_set():
            self._write_arrays(step, state, config, finish)
            return
        host = None
        try:
            host = _host_arrays(state)
            if not _views(host):
                self._released.set()
            self._write_arrays(step, host, config, finish)
        finally:
            del host  # the views go before the caller may donate the buffers
            self._released.set()

    def _write_arrays(self, step: int, state: PyTree, config: dict, finish: bool) -> None:
        """Digests the host arrays and hands them to orbax."""
        where = self.step_dir(step)
        args = ocp.args.Composite(
            state=_StateSave(state),
            config=ocp.args.JsonSave(config),
            digests=ocp.args.JsonSave(tree_digests(state)),
        )
        try:
            saved = self._mgr.save(int(step), args=args)
        except Exception as e:
            raise CheckpointError(f"checkpoint {where} could not be written: {_why(e)}") from e
        if not saved:
            raise self._not_newer(step, self._mgr.latest_step())
        if finish:
            self._finish()

    def _finish(self) -> None:
        """Blocks until orbax's pending writes are finalized."""
        try:
            self._mgr.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.directory}: save failed: {_why(e)}") from e

    def _join(self) -> None:
        """Waits for the background save, raising its error once."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def wait(self) -> None:
        """Blocks until every pending save is finalized on disk.

        Raises:
          CheckpointError: a background save failed.
        """
        self._join()
        self._finish()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        try:
            self.wait()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
            self._mgr.close()

    # -- listing ---------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Returns the finalized steps on disk, ascending (in-flight saves excluded)."""
        return _finalized_steps(self.directory)

    def latest_step(self) -> int | None:
        """Returns the newest finalized step on disk, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _pick(self, step: int | None) -> int:
        """Resolves ``step`` (None = latest) to a finalized step, waiting for own saves."""
        if self._pending is not None or self._mgr.is_saving_in_progress():
            self.wait()
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint at {self.directory}")
        if step is None:
            return steps[-1]
        if int(step) not in steps:
            raise CheckpointError(f"no checkpoint at {self.step_dir(step)} (steps: {steps})")
        return int(step)

    # -- reading ---------------------------------------------------------------------------

    def _read_json(self, step: int, item: str) -> dict:
        """Reads one JSON item of a finalized step."""
        args = ocp.args.Composite(**{item: ocp.args.JsonRestore()})
        try:
            out = self._mgr.restore(step, args=args)[item]
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {self.step_dir(step)} is unreadable ({item}): {_why(e)}"
            ) from e
        if not isinstance(out, dict):
            raise CheckpointError(f"checkpoint {self.step_dir(step)} is unreadable ({item})")
        return out

    def read_config(self, step: int | None = None) -> dict:
        """Reads the config dict of a step without loading any array.

        Args:
          step: step to read; None for the latest.

        Returns:
          the dict given to ``save``.

        Raises:
          CheckpointError: no such step, or its config cannot be read.
        """
        return self._read_json(self._pick(step), "config")

    def restore(self, target: PyTree, step: int | None = None) -> PyTree:
        """Restores a step into the structure, shapes and dtypes of ``target``.

        Args:
          target: abstract pytree (``jax.eval_shape``; ShapeDtypeStructs, optionally with
            shardings) or a concrete one with the same structure as the saved state.
          step: step to restore; None for the latest.

        Returns:
          the restored state, every leaf verified against its saved sha256.

        Raises:
          CheckpointError: no such step; the checkpoint was written for a different tree
            (names the first mismatching leaf); a leaf fails its sha256 check; or orbax
            cannot read the damaged checkpoint.
        """
        step = self._pick(step)
        where = self.step_dir(step)
        digests = self._read_json(step, "digests")
        try:
            problem = structure_mismatch(target, digests)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {where} has unreadable digests: {_why(e)}") from e
        if problem:
            raise CheckpointError(
                f"checkpoint {where} was written for a different model: {problem}"
            )
        args = ocp.args.Composite(state=_StateRestore(target))
        try:
            state = self._mgr.restore(step, args=args)["state"]
        except Exception as e:
            _quiet_orbax_read_leaks()
            raise CheckpointError(f"checkpoint {where} is unreadable: {_why(e)}") from e
        bad = corrupt_leaf(state, digests)
        if bad:
            raise CheckpointError(
                f"checkpoint {where} is corrupt: leaf {bad} fails its sha256 check"
            )
        return state
