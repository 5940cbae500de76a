"""The command-line layer: one module per command, and the flag plumbing they share.

Commands: ``python -m jaxae.train`` (``cli.train``), ``python -m jaxae.sample``
(``cli.sample``), ``python -m jaxae.evaluate`` (``cli.evaluate``) and the sweep
experiments (``cli.sweep``). The flags of config fields are made from the fields'
metadata in ``jaxae.config`` (``add_config_flags``, ``from_flags``); this layer imports
only JAX-free modules at import time, so ``--help`` answers at once, and the library
inside each command's ``main``.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import pathlib
import sys
import time
from dataclasses import fields

from jaxae import config

# when the command line was first imported: a command's start-up (imports, JAX's start)
# is measured from here
STARTED = time.perf_counter()


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default, unless its help already says what the default is."""

    def _get_help_string(self, action):
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with defaults in ``--help`` and one-line errors (exit status 2)."""

    def __init__(self, **kw):
        script = pathlib.Path(sys.argv[0]).name
        if script.startswith("jaxae-"):  # called as a console script: name it in usage
            kw["prog"] = script
        super().__init__(formatter_class=_Help, **kw)

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    run_name = None  # ns -> the run folder's name, set by commands that train

    def parse_args(self, args=None, namespace=None):
        """Parse; with ``--resume``, omitted flags take the run's saved values (``resumed``).

        Whether the resumed run may differ from the saved one is the runner's decision:
        it compares the configs field by field (``config.changes``)."""
        args_list = sys.argv[1:] if args is None else list(args)
        ns = super().parse_args(args_list, namespace)
        if getattr(ns, "resume", False) and self.run_name is not None:
            try:
                ns = resumed(self, ns, args_list)
            except config.ConfigError as e:
                self.exit(2, f"error: {e}\n")
        return ns

    def explicit(self, argv: list[str]) -> set[str]:
        """The destinations of the flags that ``argv`` gives (not their defaults)."""
        quiet = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
        for a in self._actions:
            if a.option_strings and not isinstance(a, argparse._HelpAction):
                kw = {"dest": a.dest, "nargs": a.nargs, "type": a.type}
                if a.nargs == 0:  # switches: store_true, --x/--no-x
                    kw = {"dest": a.dest, "action": "store_const", "const": True}
                quiet.add_argument(*a.option_strings, **kw)
        return set(vars(quiet.parse_known_args(argv)[0]))


def resumed(parser: Parser, args, argv: list[str]):
    """The run's saved command line, with the flags this one gives on top.

    The run's ``config.json`` records the argv it was started with; it is parsed again
    by the same parser, so ``--resume`` alone continues the run as it was started.
    """
    import json

    path = pathlib.Path(args.models_dir) / parser.run_name(args) / "config.json"
    try:
        saved_argv = json.loads(path.read_text())["argv"]
    except (OSError, ValueError, KeyError, TypeError):
        return args  # no record of a command line: the flags as given
    if command(saved_argv[0]) != command(parser.prog.split()[-1]):
        return args  # started from Python, not by this command
    saved = argparse.ArgumentParser.parse_args(parser, saved_argv[1:])
    for dest in parser.explicit(argv):
        setattr(saved, dest, getattr(args, dest))
    return saved


def command(name: str) -> str:
    """The command behind a program name or argv[0]: ``python -m jaxae.train``'s
    ``.../jaxae/train.py``, ``jaxae.train`` and ``.../bin/jaxae-train`` are all ``train``;
    ``jaxae-latent-sweep`` is ``latent_sweep``."""
    name = pathlib.PurePath(str(name)).name
    name = name.removesuffix(".py").rsplit(".", 1)[-1]
    return name.removeprefix("jaxae-").replace("-", "_")


def checked(check):
    """An argparse ``type`` from a ``jaxae.config`` check (its message becomes the error)."""

    def convert(s: str):
        try:
            return check(s)
        except config.ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = check.__name__
    return convert


positive_int = checked(config.positive_int)
non_negative_int = checked(config.non_negative_int)
non_negative_float = checked(config.non_negative_float)


def _switch_off(f) -> bool:
    """Field ``f`` is a boolean that its ``--no-NAME`` flag turns off."""
    return isinstance(f.default, bool) and config.flag_name(f).startswith("--no-")


def _dest(f) -> str:
    """Where argparse keeps field ``f``'s flag: the field's name (``--lr-schedule`` sets
    ``schedule``); a ``--no-NAME`` switch keeps ``no_NAME`` (True when given)."""
    flag = config.flag_name(f)
    return flag.removeprefix("--").replace("-", "_") if _switch_off(f) else f.name


def add_config_flags(group, cls, names, *, defaults=None, helps=None) -> None:
    """One flag per field of config dataclass ``cls`` in ``names`` (in that order).

    The flag's name, check (its argparse type), choices, nargs and help come from the
    field's metadata (``config.option``), its default from the field.

    Args:
        group: the parser or argument group that gets the flags.
        cls: ``config.ModelConfig`` or ``config.TrainConfig``.
        names: field names; each must have a flag (``cli=True``).
        defaults: {field name: default} of this command where it differs from the field's.
        helps: {field name: help} of this command where its wording differs.
    """
    by_name = {f.name: f for f in fields(cls)}
    for name in names:
        f = by_name[name]
        meta = f.metadata
        kw = {"dest": _dest(f), "help": (helps or {}).get(name, meta["help"])}
        if _switch_off(f):
            group.add_argument(config.flag_name(f), action="store_true", **kw)
            continue
        kw["default"] = (defaults or {}).get(name, f.default)
        if meta["choices"] is not None:
            kw["choices"] = tuple(meta["choices"])
        else:
            kw["type"] = checked(meta["check"])
        if meta["nargs"] is not None:
            kw["nargs"] = meta["nargs"]
            kw["default"] = list(kw["default"])
        group.add_argument(config.flag_name(f), **kw)


def from_flags(cls, args, **fixed):
    """An instance of config dataclass ``cls`` from the parsed flags of its fields.

    Fields whose flag the command does not have take their defaults; ``fixed`` gives
    fields the command sets itself (e.g. a likelihood that depends on the kind).
    """
    values = {}
    for f in fields(cls):
        if config.flag_name(f) is None or not hasattr(args, _dest(f)):
            continue
        v = getattr(args, _dest(f))
        values[f.name] = not v if _switch_off(f) else v
    return cls(**{**values, **fixed})


# the training flags, in the order of --help
TRAIN_FLAGS = (
    "dataset", "epochs", "batch_size", "lr", "schedule", "data_seed", "binarize",
    "train_size", "chunk", "eval_examples",
)  # fmt: skip
CHECKPOINT_FLAGS = ("max_to_keep", "keep")


def add_train_flags(
    p: argparse.ArgumentParser, *, epochs: int | None = None, eval_examples: int | None = None
) -> None:
    """Flags shared by every command that trains: data, optimiser, length, output.

    ``epochs`` and ``eval_examples`` are the command's defaults (None: the field's)."""
    g = p.add_argument_group("training")
    defaults = {"epochs": epochs, "eval_examples": eval_examples}
    defaults = {k: v for k, v in defaults.items() if v is not None}
    add_config_flags(g, config.TrainConfig, TRAIN_FLAGS, defaults=defaults)
    g.add_argument(
        "--compile-cache",
        default=default_compile_cache(),
        metavar="DIR",
        help="JAX's persistent compilation cache: a rerun with the same shapes skips most "
        "compilation ('off': none; default from $JAXAE_COMPILE_CACHE or "
        "$JAX_COMPILATION_CACHE_DIR; at most $JAXAE_COMPILE_CACHE_MAX_BYTES, default 2 GiB, "
        "least recently used programs evicted first)",
    )
    d = p.add_argument_group("several hosts (one process per host, same command on each)")
    d.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="address of process 0's coordination service; starts jax.distributed",
    )
    d.add_argument("--num-processes", type=positive_int, default=None, help="processes in all")
    d.add_argument("--process-id", type=non_negative_int, default=None, help="this process")
    d.add_argument(
        "--distributed",
        action="store_true",
        help="start jax.distributed from the environment (SLURM, TPU pod, Kubernetes, "
        "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID)",
    )
    o = p.add_argument_group("output")
    o.add_argument("--models-dir", default="models", help="checkpoint root (models/<run>)")
    o.add_argument("--runs-dir", default="runs", help="TensorBoard root (runs/<run>)")
    o.add_argument("--resume", action="store_true", help="continue the run from its checkpoint")
    o.add_argument("--overwrite", action="store_true", help="delete an existing run first")
    add_config_flags(o, config.TrainConfig, CHECKPOINT_FLAGS)
    add_progress_flag(o)


def add_quality_flags(p) -> None:
    """--quality-samples and --classifier: the sample-quality scores (``jaxae.quality``)."""
    p.add_argument(
        "--quality-samples",
        type=non_negative_int,
        default=10000,
        help="decoded samples per member scored by the digit classifier: confidence, "
        "entropy of the predicted classes, Fréchet distance of its features to the test "
        "set's (0: skip)",
    )
    p.add_argument(
        "--classifier",
        default=None,
        help="classifier file or folder (default: the one shipped with jaxae for mnist and "
        "fashion_mnist, so scores compare across installs; for another dataset "
        "classifier-<dataset> in $JAXAE_CLASSIFIER_DIR or beside the runs, trained there "
        "when missing: python -m jaxae.classifier)",
    )


def add_progress_flag(p) -> None:
    """``--progress`` / ``--no-progress``; by default a bar only when stderr is a terminal."""
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: only when stderr is a terminal)",
    )


def train_config(args) -> config.TrainConfig:
    """The training config of the parsed flags."""
    return from_flags(config.TrainConfig, args)


def run_kwargs(args) -> dict:
    """Keyword arguments of ``jaxae.runner.run`` from the output flags."""
    return {
        "models_dir": args.models_dir,
        "runs_dir": args.runs_dir,
        "resume": args.resume,
        "overwrite": args.overwrite,
        "progress": args.progress,
    }


# the compilation cache's size bound when neither $JAXAE_COMPILE_CACHE_MAX_BYTES nor JAX's
# own $JAX_COMPILATION_CACHE_MAX_SIZE sets one: the least recently used programs go first
COMPILE_CACHE_MAX_BYTES = 2 * 1024**3


def default_compile_cache() -> str:
    """$JAXAE_COMPILE_CACHE, else JAX's own $JAX_COMPILATION_CACHE_DIR, else
    $XDG_CACHE_HOME/jaxae/xla (~/.cache/jaxae/xla)."""
    import os

    for name in ("JAXAE_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        if os.environ.get(name):
            return os.environ[name]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxae", "xla")


def compile_cache_max_bytes() -> int:
    """The cache's size bound in bytes: $JAXAE_COMPILE_CACHE_MAX_BYTES, else JAX's own
    $JAX_COMPILATION_CACHE_MAX_SIZE, else ``COMPILE_CACHE_MAX_BYTES``; -1: no bound."""
    import os

    for name in ("JAXAE_COMPILE_CACHE_MAX_BYTES", "JAX_COMPILATION_CACHE_MAX_SIZE"):
        if os.environ.get(name):
            try:
                return int(os.environ[name])
            except ValueError:
                raise config.ConfigError(
                    f"${name} must be a number of bytes, got {os.environ[name]!r}"
                ) from None
    return COMPILE_CACHE_MAX_BYTES


def use_compile_cache(where: str) -> None:
    """JAX's persistent compilation cache in folder ``where`` ("off": none), bounded by
    ``compile_cache_max_bytes``: a command run again with the same shapes loads its
    compiled programs instead of compiling them."""
    import jax

    if where in ("", "off"):  # JAX's own $JAX_COMPILATION_CACHE_DIR too
        jax.config.update("jax_enable_compilation_cache", False)
        return

    bound = compile_cache_max_bytes()
    if bound != -1:
        _give_entries_access_times(where)
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_compilation_cache_max_size", bound)
    # every program, down to the eager initialisers' small ones (init is mostly those)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _give_entries_access_times(where: str) -> None:
    """Entries written to the cache without a size bound have no ``-atime`` file; a
    bounded cache reads one for every entry before each write (to evict the least
    recently used), and one missing file makes every write fail. Each such entry gets
    its modification time as its access time."""
    import pathlib

    folder = pathlib.Path(where)
    if not folder.is_dir():
        return
    for entry in folder.glob("*-cache"):
        atime = entry.with_name(entry.name.removesuffix("-cache") + "-atime")
        if not atime.exists():
            try:
                atime.write_bytes(entry.stat().st_mtime_ns.to_bytes(8, "little"))
            except OSError:  # a read-only cache: JAX reports its own errors
                return


def start_hosts(args) -> None:
    """Join the multi-process runtime when the flags ask for it (before any JAX work), and
    turn on the compilation cache."""
    use_compile_cache(args.compile_cache)
    if args.coordinator or args.distributed or args.num_processes:
        from jaxae import hosts

        hosts.initialize(args.coordinator, args.num_processes, args.process_id)


def fail(msg: str, code: int = 1) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


# exit code of a command whose training and checkpoint are complete but one analysis
# phase (a score, a bound, a figure) failed for some member: see the warnings and the
# ``failures`` of results.json / the ``failed`` of eval.json
ANALYSIS_FAILED = 3


def console_log() -> None:
    """The library's progress and warning lines (``logging.getLogger("jaxae")``) on stderr."""
    log = logging.getLogger("jaxae")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


# glibc's mallopt parameter: allocations of at least this many bytes get their own mapping
M_MMAP_THRESHOLD = -3


def return_freed_memory() -> None:
    """Ask glibc (where it is the C library) to give every allocation of 1 MiB or more its
    own mapping, returned to the system when it is freed.

    By default glibc raises that threshold each time such a block is freed, and larger
    blocks then come from its heaps, which keep them once freed: the initialisers' random
    draws, the evaluation's batches and the checkpoint's buffers stayed resident and added
    up (measured in benchmarks/README.md, "A thousand members"). The commands set it once
    at start; a program that imports jaxae keeps its own allocator settings.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): its allocator is left as it is
        return
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def guarded(main) -> int:
    """Run ``main()``; known user-facing errors become one line on stderr and an exit code."""
    console_log()
    return_freed_memory()
    try:
        return main()
    except config.ConfigError as e:
        return fail(str(e), 2)
    except KeyboardInterrupt as e:
        from jaxae.runner import Interrupted

        if isinstance(e, Interrupted):
            print(f"interrupted: {e}", file=sys.stderr)
            return 128 + e.signum
        return fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - map our own error types, re-raise the rest
        from jaxae.checkpoint import CheckpointError
        from jaxae.data import DataError
        from jaxae.runner import RunError
        from jaxae.step import NonFiniteError

        if isinstance(e, DataError | CheckpointError | RunError | NonFiniteError | OSError):
            return fail(str(e), 1)
        raise


DECIMALS = {"mse": 4, "active_units": 0}  # of the test metrics printed; others: 2


def format_result(res: dict) -> str:
    """The runner's result as text: test metrics per member, timing, paths."""
    t, lines = res["timing"], []
    for i, name in enumerate(res["members"]):
        vals = "  ".join(f"{k}={v[i]:.{DECIMALS.get(k, 2)}f}" for k, v in res["test"].items())
        lines.append(f"test  {name}: {vals}")
    if t["steps"]:
        lines.append(
            f"steps {res['steps']}  compile {t['compile_s']:.1f} s  train {t['train_s']:.1f} s"
            f"  {t['examples_per_s']:.0f} examples/s"
            f" ({t['member_examples_per_s']:.0f} member-examples/s)"
        )
    else:
        lines.append(f"steps {res['steps']}: already trained, nothing to run")
    lines.append(f"checkpoint {res['checkpoint']}  logs {res['logs']}")
    return "\n".join(lines)
