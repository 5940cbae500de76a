"""``python -m experiments.report``: the experiments' blocks of docs/results.md, rewritten
from what the sweeps wrote, and nothing else of the doc."""

import json
import re
import shutil

import pytest
from helpers import ROOT, run_py

from jaxae import report
from jaxae.cli.sweep import sweep_parser

DOC = f"{ROOT}/docs/results.md"
LATENT_QUICK = (
    "python -m experiments.latent_sweep --train-size 2560 --epochs 1 --seeds 1 "
    "--quality-samples 500 --latents 2 8"
)


def block(text: str, name: str) -> str:
    m = re.search(rf"<!-- report:{name} -->\n(.*?)<!-- /report:{name} -->", text, re.DOTALL)
    assert m, f"no report:{name} block"
    return m.group(1)


def prose(text: str) -> str:
    """The doc without the inside of its report blocks."""
    return re.sub(r"(<!-- report:(\w+) -->).*?(<!-- /report:\2 -->)", r"\1\3", text, flags=re.S)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick report of the latent sweep on a copy of docs/results.md."""
    tmp = tmp_path_factory.mktemp("report")
    original = open(DOC).read()
    (tmp / "doc").mkdir()
    shutil.copyfile(DOC, tmp / "doc" / "results.md")
    p = run_py(
        "-m", "experiments.report", "--quick", "--only", "latent",
        "--doc", str(tmp / "doc" / "results.md"), "--figures", str(tmp / "fig"),
        "--models-dir", str(tmp / "models"), "--runs-dir", str(tmp / "runs"), "--no-progress",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert open(DOC).read() == original, "the repository's docs/results.md was changed"
    return p, tmp, original, (tmp / "doc" / "results.md").read_text()


def test_the_block_holds_the_command_and_the_table_it_printed(quick):
    p, tmp, _, doc = quick
    text = block(doc, "latent")
    assert f"```bash\n{LATENT_QUICK}\n```" in text
    table = re.search(r"```\n(mean ± std over seeds.*?)\n```", text, re.DOTALL).group(1)
    assert table in p.stdout  # the very table the sweep printed
    rows = table.splitlines()
    head = next(r for r in rows if r.startswith("kind"))
    assert head.split()[:5] == ["kind", "latent", "beta", "test", "loss"]
    cells = [r.split()[:2] for r in rows[rows.index(head) + 1 :]]
    assert cells == [["vae", "2"], ["vae", "8"], ["ae", "2"], ["ae", "8"]]
    # every number comes from the sweep's results.json
    summary = json.loads((tmp / "models" / "latent_sweep" / "results.json").read_text())["summary"]
    assert f"{summary[0]['test_loss']:.2f}±" in rows[rows.index(head) + 1]
    assert f"`{tmp / 'models' / 'latent_sweep'}/`" in text and "1 × cpu (cpu)" in text


def test_the_environment_block_names_versions_and_date(quick):
    import jax

    text = block(quick[3], "environment")
    assert f"jax {jax.__version__}" in text and "jaxae " in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", text)
    assert "--quick --only latent" in text and "commit:" in text


def test_the_figures_are_copied_and_linked(quick):
    _, tmp, _, doc = quick
    for name in ("latent_sweep_3seeds.png", "latent_sweep_samples.png"):
        assert (tmp / "fig" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"(../fig/{name})" in block(doc, "latent")


def test_prose_and_other_blocks_are_unchanged(quick):
    p, _, original, doc = quick
    assert prose(doc) == prose(original)
    assert block(doc, "beta") == block(original, "beta")  # another experiment's block
    assert "report: latent (1/1) started" in p.stderr and "report: latent finished in" in p.stderr


def test_unknown_experiment_is_refused_in_one_line():
    p = run_py("-m", "experiments.report", "--only", "latent", "nope", timeout=60)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "'nope'" in p.stderr


def test_help_explains_and_does_not_start_jax():
    p = run_py("-m", "experiments.report", "--help", timeout=60)
    assert p.returncode == 0
    for flag in ("--quick", "--only", "--doc", "--figures", "--models-dir", "--runs-dir"):
        assert flag in p.stdout
    assert "--no-progress" in p.stdout and all(e.name in p.stdout for e in report.EXPERIMENTS)
    p = run_py("-c", "import sys, jaxae.report; print('jax' in sys.modules)", timeout=60)
    assert p.stdout.strip() == "False"


def test_a_failed_experiment_is_reported_and_the_next_still_runs(tmp_path):
    shutil.copyfile(DOC, tmp_path / "results.md")
    code = (
        "import sys; from jaxae import report\n"
        "bad = [report.Experiment(n, n, 'latent', ('--latents', '0')) for n in ('one', 'two')]\n"
        f"sys.exit(report.main(['--doc', {str(tmp_path / 'results.md')!r}], bad))"
    )
    p = run_py("-c", code, timeout=60)
    assert p.returncode == 1
    err = p.stderr
    assert "report: one FAILED" in err and "report: two (2/2) started" in err
    assert "report: two FAILED" in err and "report: one failed: argument --latents" in err
    assert (tmp_path / "results.md").read_text() == open(DOC).read()


def test_blocks_replace_their_markers_or_join_the_end():
    doc = "# Results\n\nprose\n\n<!-- report:a -->\nold\n<!-- /report:a -->\n\nmore prose\n"
    new = report.replace_block(doc, "a", "new")
    assert new == doc.replace("old", "new")
    new = report.replace_block(new, "b", "bee", "Section B")
    end = "more prose\n\n## Section B\n\n<!-- report:b -->\nbee\n<!-- /report:b -->\n"
    assert new.endswith(end)
    new = report.replace_block(new, "environment", "env")
    assert new.startswith("# Results\n\n<!-- report:environment -->\nenv\n")
    assert report.outside_blocks(new) == prose(new)


def test_quick_flags_replace_the_full_ones():
    argv = ["--kinds", "vae", "--latents", "2", "6", "12", "--name", "funnel"]
    got = report.with_flags(argv, ["--latents", "2", "6", "--epochs", "1"])
    assert got == ["--kinds", "vae", "--latents", "2", "6", "--name", "funnel", "--epochs", "1"]
    assert {e.name for e in report.EXPERIMENTS if e.default} >= {"latent", "beta", "funnel"}

    parser = sweep_parser("python -m experiments.latent_sweep", "")
    for e in report.EXPERIMENTS:  # every command line of the registry parses
        assert e.run_name(True) == e.run_name(False)
        for quick in (False, True):
            args = parser.parse_args(e.args(quick))
            assert (args.epochs == 1) == quick
