"""Wall time per component of the main job (full MNIST, the tutorial's settings), and its metrics.

  .venv/bin/python bench/bench_pipeline.py                  # the main job, into a fresh temp folder
  .venv/bin/python bench/bench_pipeline.py -- --epochs 1    # any `triplet-tfx run` flags after --

Times come from ML Metadata (each execution's creation and last update), so they are what
the LocalDagRunner spent on each component, without the process start-up.
"""
import argparse
import os
import sys
import tempfile
import time

from triplet_tfx.pipeline import cli, summary


def component_seconds(metadata_path: str) -> dict:
    store = summary.open_store(metadata_path)
    return {summary.node_id(store, execution):
            (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
            for execution in sorted(store.get_executions(), key=lambda e: e.id)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_flags", nargs="*", help="flags for `triplet-tfx run` (after --)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="triplet-tfx-bench-")
    argv = ["run", "--output-root", root, *args.run_flags]
    start = time.time()
    code = cli.main(argv)
    total = time.time() - start
    if code:
        return code
    config = cli.config_from_args(cli.build_parser().parse_args(argv))
    print(f"\n| component | wall time (s) |\n|---|---|")
    for name, seconds in component_seconds(config.metadata_path).items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| whole run (process, incl. start-up) | {total:.1f} |")
    print(f"\nOutputs in {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
