"""What Beam's portability framework costs the data components, and whether parallel Beam helps
them here: wall time of ExampleGen, StatisticsGen, SchemaGen, ExampleValidator, AnomalyGate and
Transform (no training) with the default in-process runner (`--beam-runner local`), with the same
runner's multi-process mode (one worker process per CPU: `--beam-arg=--direct_num_workers=N
--beam-arg=--direct_running_mode=multi_processing`), and with `--beam-runner portable` against
Beam's local job service and an external SDK worker pool (separate processes, the protocol of
Flink, Spark and Dataflow Runner v2), one after the other in one session, and the ratios.

  .venv/bin/python bench/bench_beam.py                      # full MNIST (60,000 / 10,000)
  .venv/bin/python bench/bench_beam.py --max-examples 200   # a quick check that it works

Beam's local job service runs each job's stages on one SDK worker (its FnApiRunner ignores
--direct_num_workers); the table says how many SDK worker processes the pool started in all.
Times per component come from ML Metadata (the run summary's).
"""

import argparse
import os
import sys
import tempfile
import time

from triplet_tfx.components.config import BeamConfig, DataConfig, PipelineConfig
from triplet_tfx.pipeline import cli, portable_beam, terminal


def run(root: str, beam: BeamConfig, max_examples, beam_args=()) -> dict:
    config = PipelineConfig(
        output_root=root,
        beam=beam,
        beam_args=tuple(beam_args),
        enable_cache=False,
        data=DataConfig(max_examples=max_examples),
    )
    start = time.time()
    result = cli.run_locally(config, data_only=True)
    total = time.time() - start
    failed = {name: state for name, state in result.executions.items() if state != "COMPLETE"}
    if failed:
        raise RuntimeError(f"{beam.runner}: not complete: {failed} (outputs in {root})")
    return {**result.seconds, "data components (wall)": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--max-examples", type=int, default=None, metavar="N", help="examples per split (default: all of MNIST)"
    )
    args = parser.parse_args()
    terminal.setup_logging(verbose=False)
    work = tempfile.mkdtemp(prefix="triplet-tfx-bench-beam-")
    local = run(os.path.join(work, "local"), BeamConfig(), args.max_examples)
    processes = os.cpu_count()
    multi = run(
        os.path.join(work, "multi"),
        BeamConfig(),
        args.max_examples,
        (f"--direct_num_workers={processes}", "--direct_running_mode=multi_processing"),
    )
    logs = os.path.join(work, "beam-services")
    os.makedirs(logs)
    with portable_beam.local_job_service_and_worker_pool(logs) as beam:
        portable = run(os.path.join(work, "portable"), beam, args.max_examples)
    with open(os.path.join(logs, portable_beam.WORKER_POOL_LOG)) as f:
        workers = f.read().count("Starting worker with command")

    size = f"{args.max_examples} examples per split" if args.max_examples else "full MNIST (60,000 / 10,000)"
    print(
        f"\nData components, {size}; multi-process: {processes} worker processes; portable: local job "
        f"service + external worker pool ({workers} SDK worker processes started)\n"
    )
    print(
        "| component | local (s) | multi-process (s) | portable (s) | multi-process / local | portable / local |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    for name, seconds in local.items():
        others = [multi.get(name, float("nan")), portable.get(name, float("nan"))]
        ratios = [other / seconds if seconds > 0 else float("nan") for other in others]
        print(f"| {name} | {seconds:.1f} | {others[0]:.1f} | {others[1]:.1f} | {ratios[0]:.2f}x | {ratios[1]:.2f}x |")
    print(f"\nOutputs and service logs in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
