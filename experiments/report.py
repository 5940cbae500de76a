"""Run the experiments of docs/results.md and rewrite its tables and figures.

python -m experiments.report                    # every experiment (over an hour on a CPU)
python -m experiments.report --quick            # the same structure in minutes
python -m experiments.report --only latent beta # a subset

The command is ``jaxae.report.main``.
"""

from jaxae.report import main

if __name__ == "__main__":
    raise SystemExit(main())
