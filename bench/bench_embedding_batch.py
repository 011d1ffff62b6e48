"""Images per call into a trained model (not a test): the evaluator's and the serving builder's
embedding (`examples_io.embed`) of one split's serialized examples, at several batch sizes.

    .venv/bin/python bench/bench_embedding_batch.py --run-dir runs/bench-run
    .venv/bin/python bench/bench_embedding_batch.py --run-dir runs/bench-run --threads default --sizes 1024,128

--run-dir is the output folder of a finished `triplet-tfx run` (`make run`, or the folder
`bench_pipeline.py` prints): its newest Trainer model and SourceExampleGen examples are used.
Threads: `parts` sets TensorFlow as a local run that trains in batch parts leaves it (each op on one
thread, two ops at once: `examples_io.embed` then runs two calls at once); `default` keeps
TensorFlow's own (each op on every core, one call at a time: a `--catalog` run, `triplet-tfx index`).
Each size runs in turn, --rounds times, alternated; the table has the best round of each.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import bench_summary


def _newest(pattern: str) -> str:
    found = glob.glob(pattern)
    if not found:
        raise SystemExit(f"nothing matches {pattern}: is --run-dir the output folder of a finished run?")
    return max(found, key=lambda p: int(os.path.basename(p)) if os.path.basename(p).isdigit() else -1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="output folder of a finished `triplet-tfx run`")
    parser.add_argument("--split", default="train", help="split of the SourceExampleGen examples (default train)")
    parser.add_argument("--count", type=int, default=20_480, help="examples embedded per pass (default 20,480)")
    parser.add_argument("--sizes", default="1024,256,128,64", help="images per call, comma-separated")
    parser.add_argument("--threads", choices=("parts", "default"), default="parts", help="TensorFlow's threads")
    parser.add_argument("--rounds", type=int, default=2, help="passes per size, alternated (default 2)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    pipelines = os.path.join(args.run_dir, "pipelines", "*")
    model_uri = _newest(os.path.join(pipelines, "Trainer", "model", "*"))
    examples_uri = _newest(os.path.join(pipelines, "SourceExampleGen", "examples", "*"))
    splits = [os.path.basename(d)[len("Split-") :] for d in glob.glob(os.path.join(examples_uri, "Split-*"))]
    if args.split not in splits:
        raise SystemExit(f"--split {args.split}: {examples_uri} has the splits {', '.join(sorted(splits))}")

    import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)

    # isort: split
    from tfx.types.standard_artifacts import Examples, Model

    from triplet_tfx.components import examples_io
    from triplet_tfx.components.training import batch_parts

    if args.threads == "parts":
        batch_parts.single_threaded_ops(2)  # as a Trainer that splits its batches in two leaves them

    model, examples = Model(), Examples()
    model.uri = model_uri
    examples.uri = examples_uri
    examples.split_names = json.dumps(splits)
    serialized = examples_io.read_split(examples, args.split)[: args.count]
    examples_io.embed(model, serialized[:1024])  # loads the model, traces the signature
    best = {size: 0.0 for size in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            examples_io.EMBED_BATCH = size
            start = time.perf_counter()
            examples_io.embed(model, serialized)
            best[size] = max(best[size], len(serialized) / (time.perf_counter() - start))
    calls = examples_io.calls_at_once()
    stamp = bench_summary.machine()
    print(
        f"\n{stamp['cpu']}, {stamp['logical_cpus']} logical CPUs, {stamp['date']}; {len(serialized):,} examples "
        f"of {args.split}, {args.threads} threads ({calls} call(s) at once); best of {args.rounds}\n"
    )
    print("| images per call | images/s |\n|---:|---:|")
    for size in sizes:
        print(f"| {size:,} | {best[size]:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
