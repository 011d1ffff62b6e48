"""Wall and CPU times of the main job (full MNIST, the tutorial's settings), of an identical rerun,
and of the tutorial notebook run just before and just after the main job.

  .venv/bin/python bench/bench_pipeline.py --tutorial       # tutorial, main job + identical rerun, tutorial
  .venv/bin/python bench/bench_pipeline.py -- --epochs 1    # no tutorial; run flags after --
  .venv/bin/python bench/bench_pipeline.py --tutorial --json runs/bench/pipeline.json   # + figures for bench_summary.py

Prints, for the first run and the identical rerun (same output root, so TFX's cache and the
evaluator's earlier result apply): the whole `triplet-tfx run` process's wall and CPU time (start-up
included), each component's wall time from ML Metadata (creation to last update of its
execution) and whether it was cached, and the Trainer's fit (wall and CPU) and after-fit times
from the run's log file ("Fit in ...", "Exported the serving model in ..."). With --tutorial, the
tutorial notebook (`bench/tfa_tutorial.py`, in the TensorFlow Addons environment
`bench/.tfa-venv`, created on first use as bench_losses.py creates it) runs before and after, and the ratios are to the
mean of its two runs: this machine's speed drifts within minutes, and CPU time (user + system,
all threads) shows the work done whatever else the machine runs. Where that environment cannot be
created (no PyPI access), --tutorial says so and runs the main job alone.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import bench_losses
import bench_summary

from triplet_tfx.components.data.data_sources import mnist_pickle_path
from triplet_tfx.pipeline import cli, summary, terminal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIAL_SCRIPT = os.path.join(REPO, "bench", "tfa_tutorial.py")
TUTORIAL_PYTHON = str(bench_losses.TFA_VENV / "bin" / "python")


def timed(command, **kwargs):
    """(wall s, CPU s of the process and its children, completed process) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    completed = subprocess.run(command, **kwargs)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode:
        raise SystemExit(f"{' '.join(command)} exited with {completed.returncode}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), completed


def timed_run(argv):
    """(wall s, CPU s) of one `triplet-tfx run` process, as a user starts it."""
    wall, cpu, _ = timed([os.path.join(os.path.dirname(sys.executable), "triplet-tfx"), *argv])
    return wall, cpu


def tutorial_run(python: str) -> dict:
    """The tutorial notebook's wall and CPU time, its fit time and epoch times (its own printout). The
    sum of its epochs is its fit without the wait that can end it (the Trainer's was tf.data's
    autotuning thread)."""
    wall, cpu, done = timed(
        [python, TUTORIAL_SCRIPT, mnist_pickle_path()], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    epochs = [float(x) for x in re.findall(r"^epoch \d+ ([\d.]+)s", done.stdout, re.M)]
    print(
        f"tutorial notebook: wall {wall:.1f} s, CPU {cpu:.1f} s, fit {result['train_seconds']} s, "
        f"epochs {'/'.join(f'{e:.1f}' for e in epochs)} s, P@1 {result['precision_at_1']}, "
        f"R-Precision {result['r_precision']}, MAP@R {result['map_at_r']}",
        flush=True,
    )
    return {"wall": wall, "cpu": cpu, "fit": result["train_seconds"], "epochs": sum(epochs)}


def trainer_seconds(log_path: str) -> dict:
    """{"fit": s, "export": s} from a run's log file (absent when the Trainer was cached)."""
    with open(log_path) as f:
        text = f.read()
    found = {}
    for key, pattern in (
        ("fit", r"Fit in ([\d.]+) s"),
        ("fit_cpu", r"Fit in [\d.]+ s, ([\d.]+) s of CPU"),
        ("export", r"Exported the serving model in ([\d.]+) s"),
    ):
        match = re.search(pattern, text)
        if match:
            found[key] = float(match.group(1))
    return found


def newest_log(root: str) -> str:
    folder = os.path.join(root, terminal.LOG_DIR)
    return os.path.join(folder, max(os.listdir(folder)))


def tutorial_environment(python: str):
    """None when the tutorial notebook can run with `python`, else why not. The default environment
    is created on first use, as bench_losses.py creates it (`make bench` runs this script first)."""
    if os.path.exists(python):
        return None
    if python != TUTORIAL_PYTHON:
        return f"{python} is missing"
    try:
        bench_losses.ensure_tfa_venv(bench_losses.TFA_VENV, bench_losses.DEFAULT_TFA_PYTHON)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"creating {bench_losses.TFA_VENV} failed ({e}); it needs PyPI access once"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tutorial", action="store_true", help="run the tutorial notebook before and after the main job"
    )
    parser.add_argument(
        "--tutorial-python", default=TUTORIAL_PYTHON, help="Python of the TensorFlow Addons environment"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH, for bench_summary.py")
    parser.add_argument("run_flags", nargs="*", help="flags for `triplet-tfx run` (after --)")
    args = parser.parse_args()
    tutorial_note = tutorial_environment(args.tutorial_python) if args.tutorial else "not run (without --tutorial)"
    if tutorial_note:
        print(f"Tutorial notebook unavailable: {tutorial_note}", file=sys.stderr)
    measured = bench_summary.machine()
    root = tempfile.mkdtemp(prefix="triplet-tfx-bench-")
    argv = ["run", "--output-root", root, *args.run_flags]
    config = cli.config_from_args(cli.build_parser().parse_args(argv))
    tutorials = [] if tutorial_note else [tutorial_run(args.tutorial_python)]
    rows = []
    for name in ("first run", "identical rerun"):
        wall, cpu = timed_run(argv)
        run = summary.latest_run(config)
        rows.append((name, wall, cpu, run, trainer_seconds(newest_log(root))))
    if tutorials:
        tutorials.append(tutorial_run(args.tutorial_python))
    tutorial = (
        {key: sum(s[key] for s in tutorials) / len(tutorials) for key in ("wall", "cpu", "fit", "epochs")}
        if tutorials
        else None
    )

    def ratio(seconds: float, key: str = "wall") -> str:
        return f" ({seconds / tutorial[key]:.2f}x the tutorial)" if tutorial else ""

    print("\n| component | first run (s) | identical rerun (s) |\n|---|---:|---:|")
    first, rerun = rows[0][3], rows[1][3]
    for component in first.executions:
        cells = [
            f"{run.seconds.get(component, 0):.1f} {run.executions.get(component, '').lower()}" for run in (first, rerun)
        ]
        print(f"| {component} | {cells[0]} | {cells[1]} |")
    startup = [wall - sum(run.seconds.values()) for _, wall, _, run, _ in rows]
    print(f"| start-up, set-up and summary (process minus components) | {startup[0]:.1f} | {startup[1]:.1f} |")
    (_, wall0, cpu0, _, trainer), (_, wall1, cpu1, _, _) = rows
    print(f"| whole `triplet-tfx run` process, wall | {wall0:.1f}{ratio(wall0)} | {wall1:.1f}{ratio(wall1)} |")
    print(f"| whole `triplet-tfx run` process, CPU | {cpu0:.1f}{ratio(cpu0, 'cpu')} | {cpu1:.1f}{ratio(cpu1, 'cpu')} |")
    if tutorial:
        print(
            f"\nTutorial notebook (mean of {len(tutorials)} runs): wall {tutorial['wall']:.1f} s, "
            f"CPU {tutorial['cpu']:.1f} s, "
            f"fit {tutorial['fit']:.1f} s, its epochs {tutorial['epochs']:.1f} s"
        )
    if "fit" in trainer:
        outside = first.seconds["Trainer"] - trainer["fit"]
        print(
            f"\nTrainer: fit {trainer['fit']:.1f} s{ratio(trainer['fit'], 'fit')}"
            + (f" ({trainer['fit'] / tutorial['epochs']:.2f}x the sum of its epochs)" if tutorial else "")
            + ", "
            f"{trainer.get('fit_cpu', float('nan')):.1f} s of CPU "
            f"(epochs and the validation pass after the last one); "
            f"export after the fit {trainer.get('export', float('nan')):.1f} s "
            f"({100 * trainer.get('export', float('nan')) / trainer['fit']:.1f}% of the fit); "
            f"all the Trainer's time outside the fit (reading and caching the data, building, export) "
            f"{outside:.1f} s ({100 * outside / trainer['fit']:.1f}% of the fit)"
        )
    if first.metrics:
        print(f"Precision@1 {first.metrics['precision_at_1']:.4f}, MAP@R {first.metrics['map_at_r']:.4f}")
    if args.json:
        runs = {
            key: {
                "wall": wall,
                "cpu": cpu,
                "seconds": run.seconds,
                "states": run.executions,
                "startup": rest,
                "trainer": found,
            }
            for key, (_, wall, cpu, run, found), rest in zip(("first_run", "identical_rerun"), rows, startup)
        }
        bench_summary.write_json(
            args.json,
            {
                "machine": measured,
                "run_flags": args.run_flags,
                "tutorial": tutorial,
                "tutorial_runs": tutorials,
                "tutorial_note": tutorial_note,
                **runs,
            },
        )
    print(f"\nOutputs in {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
