"""Wall times of the main job (full MNIST, the tutorial's settings) and of an identical rerun.

  .venv/bin/python bench/bench_pipeline.py                              # main job + identical rerun
  .venv/bin/python bench/bench_pipeline.py --seed-seconds 264 -- --epochs 1   # ratios to the seed; run flags after --

Prints, for the first run and the identical rerun (same output root, so TFX's cache and the
evaluator's earlier result apply): the whole `triplet-tfx run` process's wall time (start-up
included), each component's wall time from ML Metadata (creation to last update of its
execution) and whether it was cached, and the Trainer's fit and after-fit times from the run's
log file ("Fit in ...", "Exported the serving model in ..."). --seed-seconds (the seed
notebook's wall time, measured in the same session) adds ratios.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from triplet_tfx.pipeline import cli, summary, terminal


def timed_run(argv) -> float:
    """Wall time of one `triplet-tfx run` process, as a user starts it."""
    start = time.time()
    code = subprocess.call([os.path.join(os.path.dirname(sys.executable), "triplet-tfx"), *argv])
    if code:
        raise SystemExit(f"triplet-tfx {' '.join(argv)} exited with {code}")
    return time.time() - start


def trainer_seconds(log_path: str) -> dict:
    """{"fit": s, "export": s} from a run's log file (absent when the Trainer was cached)."""
    with open(log_path) as f:
        text = f.read()
    found = {}
    for key, pattern in (("fit", r"Fit in ([\d.]+) s"), ("export", r"Exported the serving model in ([\d.]+) s")):
        match = re.search(pattern, text)
        if match:
            found[key] = float(match.group(1))
    return found


def newest_log(root: str) -> str:
    folder = os.path.join(root, terminal.LOG_DIR)
    return os.path.join(folder, max(os.listdir(folder)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-seconds", type=float, help="the seed notebook's wall time, for ratios")
    parser.add_argument("run_flags", nargs="*", help="flags for `triplet-tfx run` (after --)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="triplet-tfx-bench-")
    argv = ["run", "--output-root", root, *args.run_flags]
    config = cli.config_from_args(cli.build_parser().parse_args(argv))
    rows = []
    for name in ("first run", "identical rerun"):
        wall = timed_run(argv)
        run = summary.latest_run(config)
        rows.append((name, wall, run, trainer_seconds(newest_log(root))))

    def ratio(seconds: float) -> str:
        return f" ({seconds / args.seed_seconds:.2f}x the seed)" if args.seed_seconds else ""

    print("\n| component | first run (s) | identical rerun (s) |\n|---|---:|---:|")
    first, rerun = rows[0][2], rows[1][2]
    for component in first.executions:
        cells = [f"{run.seconds.get(component, 0):.1f} {run.executions.get(component, '').lower()}"
                 for run in (first, rerun)]
        print(f"| {component} | {cells[0]} | {cells[1]} |")
    walls = [wall for _, wall, _, _ in rows]
    outside = [wall - sum(run.seconds.values()) for _, wall, run, _ in rows]
    print(f"| start-up, set-up and summary (process minus components) | {outside[0]:.1f} | {outside[1]:.1f} |")
    print(f"| whole `triplet-tfx run` process | {walls[0]:.1f}{ratio(walls[0])} | {walls[1]:.1f}{ratio(walls[1])} |")
    trainer = rows[0][3]
    if "fit" in trainer:
        outside = first.seconds["Trainer"] - trainer["fit"]
        print(f"\nTrainer: fit {trainer['fit']:.1f} s (epochs and the validation pass after the last one); "
              f"export after the fit {trainer.get('export', float('nan')):.1f} s "
              f"({100 * trainer.get('export', float('nan')) / trainer['fit']:.1f}% of the fit); "
              f"all the Trainer's time outside the fit (reading and caching the data, building, export) "
              f"{outside:.1f} s ({100 * outside / trainer['fit']:.1f}% of the fit)")
    if first.metrics:
        print(f"Precision@1 {first.metrics['precision_at_1']:.4f}, MAP@R {first.metrics['map_at_r']:.4f}")
    print(f"\nOutputs in {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
