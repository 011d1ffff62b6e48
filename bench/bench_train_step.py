"""Where a training step's time goes: milliseconds per step of the Trainer's own loop (its network,
loss, input pipeline and steps per call) against the arithmetic the step needs and this machine's
measured float32 peak; a per-op profile of one setting; the input pipeline alone.

  .venv/bin/python bench/bench_train_step.py                 # the table
  .venv/bin/python bench/bench_train_step.py --profile 0     # + top ops of row 0 (TensorBoard trace)
  .venv/bin/python bench/bench_train_step.py --only strided --repeat 3
  .venv/bin/python bench/bench_train_step.py --only recommended --profile 0   # top ops of the recommended batch
  .venv/bin/python bench/bench_train_step.py --json runs/bench/train_step.json   # + figures for bench_summary.py
  .venv/bin/python bench/bench_train_step.py --precision mixed_bfloat16   # layers in bfloat16 (AVX512-BF16, AMX)

Per row, in a process of its own (a dtype policy and thread settings are per process):
- FLOP per step: counted by TensorFlow's profiler (`float_operation`) on the graph of one training
  step (forward, the loss and its mining, backward, Adam), not estimated by hand;
- ms per step: `model.fit` as the Trainer runs it (`trainer.compiled_model`, `trainer.training_batches`,
  `trainer.steps_per_execution`, the batch in parts and TensorFlow's threads as `batch_parts` sets
  them), after a warm-up fit, on random 28x28x1 images of 10 classes;
- GFLOP/s achieved = FLOP per step / time per step, and its share of the peak: a float32 2048^3
  matmul (`tf.linalg.matmul`, all cores) measured in the same run (the float32 peak with
  --precision mixed_bfloat16 too, where a CPU's bfloat16 units can exceed it).
Then the input pipeline alone (ms per batch, no training), and with --profile N the top TensorFlow
ops by time over 100 steps of row N, from a TensorBoard profiler trace (the trace stays in --trace-dir
for TensorBoard's profile plugin), and how much of the traced time two or more, one or no threads
ran an op (idle cores in a step). Rows run one after the other; on a shared machine use --repeat
and compare ratios.
"""

import argparse
import collections
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import bench_summary

from triplet_tfx.components.config import PRECISIONS

# (label, TrainConfig fields); examples_per_class None = the tutorial's plain shuffled batches.
SETTINGS = [
    ("tutorial recipe", dict(network="tutorial_cnn", batch_size=32, examples_per_class=None, dropout=0.3, margin=1.0)),
    ("tutorial_cnn", dict(network="tutorial_cnn", batch_size=256, examples_per_class=None, dropout=0.3, margin=1.0)),
    ("strided", dict(network="strided", batch_size=32, examples_per_class=None, dropout=0.0)),
    ("strided (recommended)", dict(network="strided", batch_size=160, examples_per_class=32, dropout=0.0)),
]
EPOCH = 60_000  # MNIST's training examples
SHAPE = (28, 28, 1)


def _tensorflow():
    import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)

    # isort: split
    import tensorflow as tf

    return tf


def peak_gflops(size: int = 2048, repeats: int = 20) -> float:
    """float32 matmul GFLOP/s: this machine's practical peak for dense arithmetic."""
    tf = _tensorflow()
    a = tf.random.uniform((size, size))
    b = tf.random.uniform((size, size))

    @tf.function
    def chain(x):
        for _ in range(repeats):
            x = tf.linalg.matmul(x, b) * 1e-3  # scaled so the values stay finite
        return x

    chain(a).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        chain(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best / 1e9


def _model_and_batches(setting: dict, steps: int):
    import numpy as np

    tf = _tensorflow()

    from triplet_tfx.components.config import TrainConfig
    from triplet_tfx.components.training import batch_parts, trainer

    train = TrainConfig(**{"margin": 0.2, **setting})
    parts = batch_parts.parts_in_this_process(train, "default")  # as the Trainer: before the first op
    rng = np.random.default_rng(0)
    count = 16_384
    images = rng.random((count, *SHAPE), np.float32)
    labels = np.tile(np.arange(10), count)[:count].astype(np.int64)
    examples = trainer.Split.from_whole(tf.data.Dataset.from_tensors((images, labels)))  # as the Trainer holds it
    plan = {"epochs": 1, "steps_per_epoch": steps}
    per_call = trainer.steps_per_execution({"steps_per_epoch": 1875, "epochs": 5}, train)  # the main job's
    net = trainer.compiled_model(SHAPE, train, plan, steps_per_call=per_call, parts=parts)
    return net, trainer.training_batches(examples, train), train, per_call, parts


def step_flops(net, batch_size: int) -> int:
    """FLOP of one training step, by TensorFlow's profiler on the step's graph."""
    tf = _tensorflow()

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = net.loss(labels, net(images, training=True))
        net.optimizer.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
        return loss

    graph = step.get_concrete_function(
        tf.TensorSpec((batch_size, *SHAPE), tf.float32), tf.TensorSpec((batch_size,), tf.int64)
    ).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def measure(setting: dict, steps: int) -> dict:
    net, batches, train, per_call, parts = _model_and_batches(setting, steps)
    flops = step_flops(net, train.batch_size)
    steps -= steps % per_call
    net.fit(batches, epochs=1, steps_per_epoch=2 * per_call, verbose=0)  # warm-up: tracing, first batches
    start, cpu_start = time.perf_counter(), time.process_time()
    net.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds, cpu_seconds = (time.perf_counter() - start) / steps, (time.process_time() - cpu_start) / steps
    return {
        "ms": seconds * 1e3,
        "cpu_ms": cpu_seconds * 1e3,
        "flops": flops,
        "steps_per_call": per_call,
        "parts": parts,
    }


def input_pipeline_ms(setting: dict, steps: int) -> float:
    _, batches, _, _, _ = _model_and_batches(setting, steps)
    batches = iter(batches)
    for _ in range(10):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return (time.perf_counter() - start) / steps * 1e3


def busy_shares(intervals: list) -> dict:
    """{n: share of the time from the first start to the last end during which n of the (start, end)
    intervals overlap}, n capped at 2 ("2" means two or more); all idle without intervals."""
    if not intervals:
        return {0: 1.0, 1: 0.0, 2: 0.0}
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    shares: collections.Counter = collections.Counter()
    running, last = 0, edges[0][0]
    for time_ps, change in edges:
        shares[min(running, 2)] += time_ps - last
        running, last = running + change, time_ps
    span = max(edges[-1][0] - edges[0][0], 1)
    return {n: shares[n] / span for n in (0, 1, 2)}


def profile_ops(setting: dict, steps: int, trace_dir: str, top: int = 15) -> dict:
    """`top`: [(op type, total ms, share of the traced op time, count)] of `steps` training steps;
    `threads`: busy_shares of the op events (how often 0, 1, 2+ threads run an op)."""
    tf = _tensorflow()
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    net, batches, _, per_call, _ = _model_and_batches(setting, steps)
    steps -= steps % per_call
    net.fit(batches, epochs=1, steps_per_epoch=2 * per_call, verbose=0)
    tf.profiler.experimental.start(trace_dir)
    net.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    newest = max(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb")), key=os.path.getmtime)
    with open(newest, "rb") as f:
        space.ParseFromString(f.read())
    totals, counts, intervals = collections.Counter(), collections.Counter(), []
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # TensorFlow's op kernels are traced as "<op name>:<op type>"; the rest (executor,
                # tf.data, Python) are the frames around them.
                if ":" in name and not name.startswith(("Iterator::", "MemoryAllocation")) and "/" in name:
                    op_type = name.rsplit(":", 1)[1]
                    totals[op_type] += event.duration_ps / 1e9
                    counts[op_type] += 1
                    start = line.timestamp_ns * 1000 + event.offset_ps
                    intervals.append((start, start + event.duration_ps))
    whole = sum(totals.values())
    return {
        "top": [(op, ms / steps, ms / whole, counts[op] // steps) for op, ms in totals.most_common(top)],
        "threads": busy_shares(intervals),
    }


def _in_process(job: dict) -> object:
    out = subprocess.run(
        [sys.executable, __file__, "--job", json.dumps(job)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="timed steps per row (default %(default)s)")
    parser.add_argument("--only", metavar="WORD", help="only the rows whose label contains WORD")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds over the rows, interleaved; the median of each row (shared machines)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="ROW",
        help="also the top ops of this row of the table (0: its first), by time, and its busy threads",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="the layers' arithmetic in every row, as the Trainer's --precision (default %(default)s)",
    )
    parser.add_argument("--trace-dir", default=None, help="where the profiler trace goes (default: a temp folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the table's figures to PATH, for bench_summary.py")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = parser.parse_args()
    if args.job:
        job = json.loads(args.job)
        kind = job.pop("kind")
        result = {
            "peak": lambda: peak_gflops(),
            "step": lambda: measure(job["setting"], job["steps"]),
            "input": lambda: input_pipeline_ms(job["setting"], job["steps"]),
            "profile": lambda: profile_ops(job["setting"], job["steps"], job["trace_dir"]),
        }[kind]()
        print(json.dumps(result))
        return 0

    rows = [
        (label, {**setting, "precision": args.precision})
        for label, setting in SETTINGS
        if not args.only or args.only in label
    ]
    if not rows:
        parser.error(f"--only {args.only!r}: no row's label contains it")
    if args.profile is not None and not 0 <= args.profile < len(rows):
        parser.error(f"--profile {args.profile}: the table has rows 0 to {len(rows) - 1}")
    measured = bench_summary.machine()
    peaks, steps, inputs = [], collections.defaultdict(list), collections.defaultdict(list)
    for _ in range(args.repeat):  # interleaved, so that a busy spell of a shared machine hits every row
        peaks.append(_in_process({"kind": "peak"}))
        for i, (_, setting) in enumerate(rows):
            steps[i].append(_in_process({"kind": "step", "setting": setting, "steps": args.steps}))
            inputs[i].append(_in_process({"kind": "input", "setting": setting, "steps": args.steps}))
    peak = statistics.median(peaks)
    figures = []
    for i, (label, setting) in enumerate(rows):
        ms = statistics.median(r["ms"] for r in steps[i])
        figures.append(
            {
                "label": label,
                "network": setting["network"],
                "batch_size": setting["batch_size"],
                "examples_per_class": setting.get("examples_per_class"),
                "steps_per_call": steps[i][0]["steps_per_call"],
                "parts": steps[i][0]["parts"],
                "mflop": steps[i][0]["flops"] / 1e6,
                "ms": ms,
                "cpu_ms": statistics.median(r["cpu_ms"] for r in steps[i]),
                "gflops": steps[i][0]["flops"] / ms / 1e6,
                "epoch_seconds": ms * -(-EPOCH // setting["batch_size"]) / 1e3,
                "input_ms": statistics.median(inputs[i]),
            }
        )
    print(
        f"{measured['cpu']}, {measured['logical_cpus']} logical CPUs; "
        f"float32 matmul peak {peak:.1f} GFLOP/s (median of {len(peaks)}); layers in {args.precision}\n"
    )
    print(
        "| setting | batch | steps per call | batch parts | MFLOP per step | ms per step | CPU ms per step | GFLOP/s "
        "| % of peak | s per 60k epoch | input alone, ms per batch |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for row in figures:
        per_class = row["examples_per_class"]
        balanced = f" = {row['batch_size'] // per_class} x {per_class}" if per_class else ""
        print(
            f"| {row['label']} ({row['network']}) | {row['batch_size']}{balanced} "
            f"| {row['steps_per_call']} | {row['parts']} "
            f"| {row['mflop']:.1f} | {row['ms']:.2f} | {row['cpu_ms']:.2f} | {row['gflops']:.1f} "
            f"| {100 * row['gflops'] / peak:.1f} | {row['epoch_seconds']:.1f} | {row['input_ms']:.2f} |"
        )
    if args.json:
        bench_summary.write_json(
            args.json, {"machine": measured, "peak_gflops": peak, "precision": args.precision, "rows": figures}
        )
    if args.profile is not None:
        label, setting = rows[args.profile]
        trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="triplet-tfx-trace-")
        profile = _in_process({"kind": "profile", "setting": setting, "steps": 100, "trace_dir": trace_dir})
        print(f"\nTop TensorFlow ops of '{label}', per step (100 steps; trace in {trace_dir}):\n")
        print("| op | ms per step | share of op time | calls per step |\n|---|---:|---:|---:|")
        for op, ms, share, calls in profile["top"]:
            print(f"| {op} | {ms:.3f} | {100 * share:.1f}% | {calls} |")
        threads = {int(n): share for n, share in profile["threads"].items()}  # JSON made the keys strings
        print(
            f"\nThreads running an op over the traced steps: two or more {100 * threads[2]:.0f} % of the "
            f"time, one {100 * threads[1]:.0f} %, none {100 * threads[0]:.0f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
