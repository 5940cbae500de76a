"""Wall time of a 6-member latent sweep vs six standalone runs of the same steps, and ratio.

python -m benchmarks.sweep_vs_separate
"""

from benchmarks.run import main

if __name__ == "__main__":
    raise SystemExit(main(["--only", "sweep", "--out", "benchmarks/sweep_vs_separate.json"]))
