"""What Beam's portability framework costs the data components: wall time of ExampleGen,
StatisticsGen, SchemaGen, ExampleValidator, AnomalyGate and Transform (no training) with the
default in-process runner (`--beam-runner local`) and with `--beam-runner portable` against
Beam's local job service and an external SDK worker pool (separate processes, the protocol of
Flink, Spark and Dataflow Runner v2), one after the other in one session, and their ratio.

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

from triplet_tfx.pipeline import cli, portable_beam, terminal
from triplet_tfx.pipeline.config import BeamConfig, DataConfig, PipelineConfig


def run(root: str, beam: BeamConfig, max_examples) -> dict:
    config = PipelineConfig(output_root=root, beam=beam, enable_cache=False,
                            data=DataConfig(max_examples_per_split=max_examples))
    start = time.time()
    result = cli.run_locally(config, data_only=True)
    total = time.time() - start
    failed = {name: state for name, state in result.executions.items() if state != "COMPLETE"}
    if failed:
        raise RuntimeError(f"{beam.runner}: not complete: {failed} (outputs in {root})")
    return {**result.seconds, "data components (wall)": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=None, metavar="N",
                        help="examples per split (default: all of MNIST)")
    args = parser.parse_args()
    terminal.setup_logging(verbose=False)
    work = tempfile.mkdtemp(prefix="triplet-tfx-bench-beam-")
    local = run(os.path.join(work, "local"), BeamConfig(), args.max_examples)
    logs = os.path.join(work, "beam-services")
    os.makedirs(logs)
    with portable_beam.local_job_service_and_worker_pool(logs) as beam:
        portable = run(os.path.join(work, "portable"), beam, args.max_examples)
    with open(os.path.join(logs, portable_beam.WORKER_POOL_LOG)) as f:
        workers = f.read().count("Starting worker with command")

    size = f"{args.max_examples} examples per split" if args.max_examples else "full MNIST (60,000 / 10,000)"
    print(f"\nData components, {size}; portable: local job service + external worker pool "
          f"({workers} SDK worker processes started)\n")
    print("| component | local (s) | portable (s) | portable / local |\n|---|---:|---:|---:|")
    for name, seconds in local.items():
        other = portable.get(name, float("nan"))
        ratio = other / seconds if seconds > 0 else float("nan")
        print(f"| {name} | {seconds:.1f} | {other:.1f} | {ratio:.2f}x |")
    print(f"\nOutputs and service logs in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
