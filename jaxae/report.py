"""``python -m experiments.report``: run the experiments of docs/results.md and rewrite
their tables and figures.

Each experiment is one of the sweep commands (``jaxae.cli.sweep.latent_main`` or
``beta_main``) with a fixed argument list, run in this process. Its part of the doc sits
between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->``: the command, where and
when it ran, the table that the command printed (``jaxae.pipeline.format_table`` of the
``summary`` rows in its results.json) and its figures, copied to the figures folder. The
block ``<!-- report:environment -->`` near the top names the versions, devices, date
and commit of the last report. The prose around the markers is left as it is; a marker
pair missing from the doc is appended at its end.

``--quick`` runs every experiment with a small training set, one epoch, one seed and a
few latent sizes or betas: the same structure in minutes on a CPU, a check of the
command, not a result.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jaxae.cli import ANALYSIS_FAILED, Parser, add_progress_flag, console_log
from jaxae.cli import sweep as sweep_cli

log = logging.getLogger("jaxae")

REPORT = "python -m experiments.report"
ENVIRONMENT = "environment"  # the marker name of the block at the top


# --- the experiments ---------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A sweep command the report runs in-process."""

    prog: str  # how a user types it
    script: str  # its file, recorded as argv[0] in the run's config.json
    main: object  # argv -> exit status
    run: str  # its default run name (models/<run>)
    columns: str  # "latent" or "beta": the columns of the table it prints


COMMANDS = {
    "latent": Command(
        "python -m experiments.latent_sweep",
        "experiments/latent_sweep.py",
        sweep_cli.latent_main,
        "latent_sweep",
        "latent",
    ),
    "beta": Command(
        "python -m experiments.beta_sweep",
        "experiments/beta_sweep.py",
        sweep_cli.beta_main,
        "beta_sweep",
        "beta",
    ),
}


def table_columns(kind: str) -> tuple[str, ...]:
    """The columns a sweep command prints (``LATENT_COLUMNS`` or ``BETA_COLUMNS``)."""
    from jaxae.pipeline import LATENT_COLUMNS

    return {"latent": LATENT_COLUMNS, "beta": sweep_cli.BETA_COLUMNS}[kind]


def flags(line: str) -> tuple[str, ...]:
    """A command line's arguments from one string (none holds a space)."""
    return tuple(line.split())


# every experiment's --quick run: a slice of the training set, one epoch, one seed, few
# scored samples (its own quick flags come on top)
QUICK = flags("--train-size 2560 --epochs 1 --seeds 1 --quality-samples 500")


@dataclass(frozen=True)
class Experiment:
    """One experiment of docs/results.md.

    Attributes:
        name: its marker (``<!-- report:NAME -->``) and ``--only`` name.
        title: the heading of its section when the doc has no marker for it.
        command: a key of ``COMMANDS``.
        argv: the command's arguments (the output folders are the report's).
        quick: flags that replace (or join) ``argv``'s in ``--quick``, after ``QUICK``.
        figures: (file in models/<run>/, name in the figures folder) pairs.
        default: run without ``--only``; optional experiments run only when named.
    """

    name: str
    title: str
    command: str
    argv: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    figures: tuple[tuple[str, str], ...] = ()
    default: bool = True

    def args(self, quick: bool) -> list[str]:
        """The command's arguments, full or quick."""
        if not quick:
            return list(self.argv)
        return with_flags(with_flags(list(self.argv), QUICK), self.quick)

    def run_name(self, quick: bool) -> str:
        """models/<run>: its --name, else the command's default."""
        argv = self.args(quick)
        return argv[argv.index("--name") + 1] if "--name" in argv else COMMANDS[self.command].run


FUNNEL = "--funnel 512 256 128 64 32 12 6 3 2"

EXPERIMENTS = (
    Experiment(
        "latent",
        "Question 1: the main job",
        "latent",
        quick=flags("--latents 2 8"),
        figures=(
            ("latent_sweep.png", "latent_sweep_3seeds.png"),
            ("samples.png", "latent_sweep_samples.png"),
        ),
    ),
    Experiment(
        "funnel",
        "One funnel encoder cut at 2, 6 and 12 units",
        "latent",
        flags(f"--kinds vae {FUNNEL} --latents 2 6 12 --name funnel"),
        quick=flags("--latents 2 6"),
        figures=(
            ("latent_sweep.png", "funnel_latent_sweep.png"),
            ("samples.png", "funnel_samples.png"),
        ),
    ),
    Experiment(
        "wide",
        "The funnel's latent sizes under the 512-256 encoder",
        "latent",
        flags("--kinds vae --latents 2 6 12 --name wide"),
        quick=flags("--latents 2 6"),
        figures=(("latent_sweep.png", "wide_latent_sweep.png"),),
    ),
    Experiment(
        "iwae",
        "Question 1 under a tighter bound: VAEs and IWAEs (k = 5)",
        "latent",
        flags("--kinds vae --iw-ks 1 5 --seeds 1 --eval-k 100 --name iwae"),
        quick=flags("--latents 2 8 --eval-k 10"),
        figures=(("latent_sweep.png", "iwae_latent_sweep.png"),),
    ),
    Experiment(
        "archs",
        "MLP and convolutional members in one program",
        "latent",
        flags("--archs mlp conv --kinds vae --seeds 2 --eval-k 1000 --name archs"),
        quick=flags("--hidden 64 --latents 2 --train-size 1280 --eval-k 10"),
        figures=(("latent_sweep.png", "archs_latent_sweep.png"),),
        default=False,  # vmapped convolutions are very slow on a CPU: for an accelerator
    ),
    Experiment(
        "fashion",
        "Question 1 on Fashion-MNIST",
        "latent",
        flags("--dataset fashion_mnist --seeds 1 --name fashion"),
        quick=flags("--latents 2 8"),
        figures=(("latent_sweep.png", "fashion_latent_sweep.png"),),
    ),
    Experiment(
        "beta",
        "Question 2: the beta sweep",
        "beta",
        quick=flags("--betas 0.5 2"),
        figures=(
            ("beta_sweep.png", "beta_sweep_quality.png"),
            ("samples.png", "beta_sweep_samples.png"),
        ),
    ),
    Experiment(
        "nll",
        "Test log-likelihood: cosine schedule, with and without KL warm-up",
        "beta",
        flags(
            "--latents 50 --betas 1 --warmups 0 20000 --lr-schedule cosine --epochs 250 "
            "--seeds 1 --eval-k 5000 --eval-examples 2000 --name nll-warmup"
        ),
        quick=flags("--eval-k 50 --eval-examples 500"),
        default=False,  # 250 epochs: about an hour on a 2-core CPU
    ),
    Experiment(
        "nll_iwae",
        "Test log-likelihood of an IWAE (k = 5), cosine schedule",
        "beta",
        flags(
            "--latents 50 --betas 1 --iw-ks 5 --lr-schedule cosine --epochs 250 --seeds 1 "
            "--eval-k 5000 --eval-examples 2000 --name nll-iwae5"
        ),
        quick=flags("--eval-k 50 --eval-examples 500"),
        default=False,  # 250 epochs of a 5-sample bound: about 80 min on a 2-core CPU
    ),
    Experiment(
        "latent_quality",
        "Sample quality of VAEs and AEs at 16, 32 and 64 units",
        "latent",
        flags("--latents 16 32 64 --seeds 1 --name latent_quality"),
        quick=flags("--latents 16 32"),
        figures=(("latent_sweep.png", "latent_sweep_quality.png"),),
    ),
)


def with_flags(argv: list[str], extra) -> list[str]:
    """``argv`` with each flag of ``extra`` and its values in place of that flag's own
    (a flag it lacks is added at the end): ``--latents 2 6 12`` becomes ``--latents 2 6``."""

    def groups(args) -> dict[str, list[str]]:
        out, key = {}, None
        for a in args:
            if a.startswith("--"):
                key = a
                out[key] = []
            elif key is None:
                raise ValueError(f"a value before any flag: {a!r}")
            else:
                out[key].append(a)
        return out

    merged = {**groups(argv), **groups(extra)}
    return [a for k, vs in merged.items() for a in (k, *vs)]


# --- the doc -----------------------------------------------------------------------------


def markers(name: str) -> tuple[str, str]:
    return f"<!-- report:{name} -->", f"<!-- /report:{name} -->"


def replace_block(doc: str, name: str, body: str, title: str | None = None) -> str:
    """``doc`` with the text between the ``name`` markers replaced by ``body``.

    A doc without the markers gets them at its end, under a ``## title`` heading (the
    environment block: after the doc's first heading)."""
    start, end = markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(doc):
        return pattern.sub(lambda _: block, doc)
    if name == ENVIRONMENT:
        head, sep, rest = doc.partition("\n")
        if head.startswith("# "):
            return f"{head}\n\n{block}\n{sep}{rest}"
        return f"{block}\n\n{doc}"
    heading = f"## {title}\n\n" if title else ""
    return f"{doc.rstrip()}\n\n{heading}{block}\n"


def outside_blocks(doc: str) -> str:
    """The doc with every report block emptied: what the report never changes."""
    pattern = re.compile(r"(<!-- report:([\w-]+) -->).*?(<!-- /report:\2 -->)", re.DOTALL)
    return pattern.sub(lambda m: f"{m.group(1)}{m.group(3)}", doc)


def write_text(path: Path, text: str) -> None:
    """Write through a temporary file, so an interrupted write leaves the old doc."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def versions_line(env: dict) -> str:
    v = env.get("versions", {})
    names = ("jaxae", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
    return ", ".join(f"{p} {v[p]}" for p in names if v.get(p))


def devices_line(env: dict) -> str:
    n, kind = env.get("device_count"), env.get("device_kind")
    procs = env.get("process_count", 1)
    where = f"{n} × {kind} ({env.get('platform')})"
    return where + (f", {procs} processes" if procs and procs > 1 else "")


def commit_of(env: dict) -> str:
    return (env.get("git_commit") or "unknown")[:12]


def environment_block(env: dict, argv: list[str], date: str) -> str:
    """The block at the top: what the last report ran on."""
    cmd = " ".join([REPORT, *argv])
    return "\n".join(
        [
            f"Blocks between `report:` markers are written by `{REPORT}`. Last run: "
            f"`{cmd}`, {date}.",
            "",
            f"- versions: {versions_line(env)}; Python {env.get('python')}",
            f"- devices: {devices_line(env)}",
            f"- commit: {commit_of(env)}",
        ]
    )


def experiment_block(
    exp: Experiment, quick: bool, run_dir: Path, figures: list[Path], doc: Path, wall: float
) -> str:
    """An experiment's block: its command, where and when it ran, its table, its figures."""
    from jaxae.pipeline import format_table

    cmd = COMMANDS[exp.command]
    results = json.loads((run_dir / "results.json").read_text())
    try:
        env = json.loads((run_dir / "config.json").read_text()).get("env", {})
    except (OSError, ValueError):
        env = {}
    when = datetime.datetime.fromtimestamp(
        (run_dir / "results.json").stat().st_mtime, datetime.UTC
    ).strftime("%Y-%m-%d %H:%M UTC")
    timing = results.get("timing", {})
    ran = (
        f"Ran {when} on {devices_line(env)}; {versions_line(env)}; commit {commit_of(env)}; "
        f"train {timing.get('train_s', float('nan')):.1f} s, {wall:.1f} s in all; "
        f"output in `{run_dir}/`."
    )
    lines = ["```bash", " ".join([cmd.prog, *exp.args(quick)]), "```", ran]
    if quick:
        lines.append(f"(`{REPORT} --quick`: a short run that checks the command, not a result.)")
    failures = results.get("failures") or []
    if failures:
        failed = "; ".join(f"{f.get('member') or 'all'}: {f['phase']}" for f in failures)
        lines.append(f"Failed analysis phases (see results.json): {failed}.")
    table = format_table(results["summary"], table_columns(cmd.columns))
    lines += ["", "```", table, "```"]
    links = [f"![{exp.name}: {p.name}]({os.path.relpath(p, doc.parent)})" for p in figures]
    if links:
        lines += ["", " ".join(links)]
    return "\n".join(lines)


# --- running -----------------------------------------------------------------------------


class _Tee:
    """A text stream that writes through to another and keeps the last ``error:`` line
    (``jaxae.cli.guarded`` reports a failed command with one such line)."""

    def __init__(self, stream):
        self.stream, self.error = stream, None

    def write(self, s):
        for line in s.splitlines():
            if line.startswith("error:"):
                self.error = line.removeprefix("error:").strip()
        return self.stream.write(s)

    def __getattr__(self, name):
        return getattr(self.stream, name)


@dataclass
class Outcome:
    name: str
    status: int  # the command's exit status (0: done)
    seconds: float
    error: str | None = None
    failures: list = field(default_factory=list)


def run_command(cmd: Command, argv: list[str]) -> tuple[int, str | None]:
    """Run a sweep command in this process: (exit status, its error line or None)."""
    saved_argv, saved_err = sys.argv, sys.stderr
    tee = _Tee(sys.stderr)
    # the run's config.json records sys.argv: the command that reproduces it
    sys.argv = [cmd.script, *argv]
    sys.stderr = tee
    # its start-up and wall time count from its own start, not from the report's
    sweep_cli.STARTED = time.perf_counter()
    try:
        status = cmd.main(argv)
    except SystemExit as e:  # a flag refused by its parser
        status = e.code if isinstance(e.code, int) else 1
    except Exception as e:  # noqa: BLE001 - one experiment fails, the others still run
        log.exception(f"{cmd.prog} raised")
        return 1, f"{type(e).__name__}: {e}"
    finally:
        sys.argv, sys.stderr = saved_argv, saved_err
    return status, tee.error if status else None


def run_report(
    experiments,
    *,
    quick: bool,
    doc: Path,
    figures: Path,
    models_dir: Path,
    runs_dir: Path,
    resume: bool = False,
    progress: bool | None = None,
    argv: list[str] = (),
) -> list[Outcome]:
    """Run ``experiments`` one after the other and rewrite their blocks of ``doc``.

    A failed experiment is logged and leaves its block as it was; the others still run.
    The doc is rewritten after every experiment, so what finished is kept.
    Returns:
        one ``Outcome`` per experiment.
    """
    outcomes = []
    env_written = False
    for i, exp in enumerate(experiments, 1):
        cmd = COMMANDS[exp.command]
        args = exp.args(quick)
        out = ["--models-dir", str(models_dir), "--runs-dir", str(runs_dir)]
        out.append("--resume" if resume else "--overwrite")
        if progress is not None:
            out.append("--progress" if progress else "--no-progress")
        log.info(
            f"report: {exp.name} ({i}/{len(experiments)}) started: {cmd.prog} {' '.join(args)}"
        )
        t0 = time.perf_counter()
        status, error = run_command(cmd, [*args, *out])
        seconds = time.perf_counter() - t0
        run_dir = models_dir / exp.run_name(quick)
        outcome = Outcome(exp.name, status, seconds, error)
        outcomes.append(outcome)
        # ANALYSIS_FAILED: trained and tabulated, but a score or figure failed
        if status not in (0, ANALYSIS_FAILED) or not (run_dir / "results.json").is_file():
            outcome.error = outcome.error or f"exit status {status}"
            outcome.status = status or 1
            log.error(f"report: {exp.name} FAILED after {seconds:.1f} s: {outcome.error}")
            continue
        try:
            copied = copy_figures(exp, run_dir, figures)
            text = doc.read_text() if doc.exists() else "# Results\n"
            body = experiment_block(exp, quick, run_dir, copied, doc, seconds)
            text = replace_block(text, exp.name, body, exp.title)
            if not env_written:
                from jaxae.runner import environment

                now = datetime.datetime.now(datetime.UTC)
                date = now.strftime("%Y-%m-%d %H:%M UTC")
                env = environment_block(environment(), argv, date)
                text = replace_block(text, ENVIRONMENT, env)
                env_written = True
            write_text(doc, text)
        except Exception as e:  # noqa: BLE001 - its run stands; the next experiment runs
            outcome.status, outcome.error = 1, f"writing its block: {type(e).__name__}: {e}"
            log.error(f"report: {exp.name} FAILED after {seconds:.1f} s: {outcome.error}")
            continue
        outcome.failures = json.loads((run_dir / "results.json").read_text()).get("failures")
        if status:
            outcome.error = f"{len(outcome.failures or ())} analysis phase(s) failed"
            log.error(f"report: {exp.name} finished in {seconds:.1f} s, {outcome.error}")
        else:
            log.info(f"report: {exp.name} finished in {seconds:.1f} s; its block is in {doc}")
    return outcomes


def copy_figures(exp: Experiment, run_dir: Path, figures: Path) -> list[Path]:
    """Copy the experiment's figures from its run folder; returns the copies (a figure
    that was not drawn is logged and left out)."""
    figures.mkdir(parents=True, exist_ok=True)
    copied = []
    for src, dst in exp.figures:
        if not (run_dir / src).is_file():
            log.warning(f"report: {exp.name}: {run_dir / src} was not drawn")
            continue
        shutil.copyfile(run_dir / src, figures / dst)
        copied.append(figures / dst)
    return copied


# --- the command line --------------------------------------------------------------------

QUICK_DIR = Path("out/report-quick")  # where --quick writes unless told


def parser(experiments=EXPERIMENTS) -> Parser:
    names = [e.name for e in experiments]
    listing = "; ".join(
        f"{e.name}{'' if e.default else ' (optional)'} = {e.title}" for e in experiments
    )
    p = Parser(
        prog=REPORT,
        description="Run every experiment of docs/results.md with the sweep commands and "
        "rewrite its blocks: the text between <!-- report:NAME --> and <!-- /report:NAME --> "
        "becomes the command, where and when it ran, the table it printed and its figures; "
        "<!-- report:environment --> names the versions, devices, date and commit. The prose "
        "around the markers stays; a missing marker pair is appended at the end of the doc. "
        "The full report takes over an hour on a 2-core CPU. Run it from the repository root.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="every experiment with 2,560 training digits, 1 epoch, 1 seed, 500 scored "
        "samples and two latent sizes or betas: a few minutes on a CPU, a check of the "
        f"command, not results. Without --doc it writes a copy of docs/results.md in "
        f"{QUICK_DIR}/ (and its figures, models and runs there)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=names,
        metavar="NAME",
        default=None,
        help=f"run these experiments only (default: all but the optional ones). {listing}",
    )
    p.add_argument(
        "--doc",
        default=None,
        help=f"the doc to rewrite (default: docs/results.md; with --quick "
        f"{QUICK_DIR}/results.md, copied from docs/results.md when missing)",
    )
    p.add_argument(
        "--figures",
        default=None,
        help="folder the figures are copied to (default: the doc's folder)",
    )
    p.add_argument(
        "--models-dir",
        default=None,
        help=f"root of the experiments' checkpoints and results.json (default: models/report; "
        f"with --quick {QUICK_DIR}/models)",
    )
    p.add_argument(
        "--runs-dir",
        default=None,
        help=f"root of their TensorBoard logs (default: runs/report; with --quick "
        f"{QUICK_DIR}/runs)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue each experiment's run from its checkpoint instead of starting it "
        "again (a finished run is only evaluated and tabulated again)",
    )
    add_progress_flag(p)
    return p


def main(argv=None, experiments=EXPERIMENTS) -> int:
    """Parse, run the chosen experiments, rewrite the doc; 1 if any experiment failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(experiments).parse_args(argv)
    console_log()
    chosen = [e for e in experiments if (e.name in args.only if args.only else e.default)]
    if args.doc is None and args.quick:
        doc = QUICK_DIR / "results.md"
        if not doc.exists():
            doc.parent.mkdir(parents=True, exist_ok=True)
            if Path("docs/results.md").is_file():
                shutil.copyfile("docs/results.md", doc)
    else:
        doc = Path(args.doc or "docs/results.md")
    if not doc.parent.is_dir():
        print(f"error: no folder {doc.parent} for --doc {doc}", file=sys.stderr)
        return 2
    from jaxae.runner import environment

    environment()  # reads the commit now, before a checkout can move on during the runs
    root = QUICK_DIR if args.quick else None
    models = Path(args.models_dir or (root / "models" if root else "models/report"))
    runs = Path(args.runs_dir or (root / "runs" if root else "runs/report"))
    t0 = time.perf_counter()
    outcomes = run_report(
        chosen,
        quick=args.quick,
        doc=doc,
        figures=Path(args.figures) if args.figures else doc.parent,
        models_dir=models,
        runs_dir=runs,
        resume=args.resume,
        progress=args.progress,
        argv=argv,
    )
    failed = [o for o in outcomes if o.status]
    done = len(outcomes) - len(failed)
    log.info(
        f"report: {done} of {len(outcomes)} experiments done in {time.perf_counter() - t0:.1f} s"
        f"; {doc} rewritten"
    )
    for o in failed:
        log.error(f"report: {o.name} failed: {o.error}")
    return 1 if failed else 0
