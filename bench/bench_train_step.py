"""Milliseconds per training step of the project's networks and loss, by network, batch, layer
arithmetic, dropout and XLA, on random 28x28x1 images; and seconds per 60k-example epoch, the
figure to compare with the seed notebook (tutorial network, batch 32, plain shuffled batches).

  .venv/bin/python bench/bench_train_step.py [--steps 40] [--only strided] [--repeat 3]

Each setting runs in its own process (a dtype policy and XLA state are per process) after
5 warm-up steps; the figure is the mean over --steps steps of `model.fit`. Run the rows back
to back and compare ratios when the machine is shared. The class-balanced input pipeline is
timed alone too (ms per batch, no training).
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
import time

# (label, TrainConfig fields); examples_per_class None = the tutorial's plain shuffled batches.
SETTINGS = [
    ("seed: tutorial", dict(network="tutorial_cnn", batch_size=32, examples_per_class=None, dropout=0.3)),
    ("tutorial", dict(network="tutorial_cnn", batch_size=256, dropout=0.3)),
    ("tutorial, XLA", dict(network="tutorial_cnn", batch_size=256, dropout=0.3, jit=True)),
    ("tutorial", dict(network="tutorial_cnn", batch_size=256, dropout=0.3, precision="mixed_bfloat16")),
    ("tutorial", dict(network="tutorial_cnn", batch_size=256, dropout=0.0)),
    ("tutorial", dict(network="tutorial_cnn", batch_size=256, dropout=0.0, precision="mixed_bfloat16")),
    ("strided", dict(network="strided", batch_size=256, dropout=0.0)),
    ("strided", dict(network="strided", batch_size=256, dropout=0.0, precision="mixed_bfloat16")),
    ("strided", dict(network="strided", batch_size=160, examples_per_class=32, dropout=0.0)),
    ("strided", dict(network="strided", batch_size=240, examples_per_class=48, dropout=0.0)),
]
EPOCH = 60_000  # MNIST's training examples


def measure(setting: dict, steps: int) -> float:
    import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)
    # isort: split
    import numpy as np
    import tensorflow as tf

    from triplet_tfx.components.config import TrainConfig
    from triplet_tfx.components.training import trainer

    setting = dict(setting)
    jit = setting.pop("jit", False)
    train = TrainConfig(**{"examples_per_class": 32, "margin": 0.2, **setting})
    rng = np.random.default_rng(0)
    images = rng.random((4096, 28, 28, 1), np.float32)
    classes = train.batch_size // train.examples_per_class if train.examples_per_class else 10
    labels = np.tile(np.arange(classes), 4096)[:4096].astype(np.int64)
    batches = trainer.training_batches(tf.data.Dataset.from_tensor_slices((images, labels)).cache(), train)
    plan = {"epochs": 1, "steps_per_epoch": steps}
    net = trainer.compiled_model((28, 28, 1), train, plan)
    net.jit_compile = jit
    net.fit(batches, epochs=1, steps_per_epoch=5, verbose=0)
    start = time.perf_counter()
    net.fit(batches, verbose=0, **plan)
    return (time.perf_counter() - start) / steps * 1000


def input_pipeline_ms(batch_size: int, steps: int) -> float:
    import triplet_tfx.pipeline  # noqa: F401
    # isort: split
    import numpy as np
    import tensorflow as tf

    from triplet_tfx.components.config import TrainConfig
    from triplet_tfx.components.training import trainer

    labels = np.tile(np.arange(10), 6000).astype(np.int64)
    images = np.zeros((60000, 28, 28, 1), np.float32)
    examples = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    batches = iter(trainer.training_batches(examples, TrainConfig(batch_size=batch_size, examples_per_class=32)))
    for _ in range(5):
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return (time.perf_counter() - start) / steps * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--only", metavar="WORD", help="only the rows whose label contains WORD (and the seed's)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over the rows, interleaved; the median of each row (shared machines)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one setting, as JSON
    args = parser.parse_args()
    if args.one:
        setting = json.loads(args.one)
        print(json.dumps(input_pipeline_ms(256, args.steps) if setting == "input" else measure(setting, args.steps)))
        return 0
    print("| network | batch | layer arithmetic | dropout | XLA | ms per step | s per 60k epoch | vs seed |\n"
          "|---|---:|---|---:|---|---:|---:|---:|")
    rows = [(label, setting) for label, setting in SETTINGS + [("input", "input")]
            if not args.only or args.only in label or label.startswith("seed") or label == "input"]
    runs = {i: [] for i in range(len(rows))}
    for _ in range(args.repeat):  # interleaved, so that a busy spell of a shared machine hits every row
        for i, (_, setting) in enumerate(rows):
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one", json.dumps(setting)],
                                 check=True, capture_output=True, text=True).stdout
            runs[i].append(json.loads(out.strip().splitlines()[-1]))
    seed_epoch = None
    for i, (label, setting) in enumerate(rows):
        ms = statistics.median(runs[i])
        if setting == "input":
            print(f"| class-balanced input pipeline alone (60k examples, 10 classes) | 256 | | | | {ms:.1f} | | |")
            continue
        epoch = ms * math.ceil(EPOCH / setting["batch_size"]) / 1000
        seed_epoch = seed_epoch or epoch
        m = setting.get("examples_per_class", 32)
        print(f"| {label} | {setting['batch_size']}" + (f" = {setting['batch_size'] // m} x {m}" if m else "")
              + f" | {setting.get('precision', 'float32')} | {setting['dropout']}"
              f" | {'yes' if setting.get('jit') else 'no'}"
              f" | {ms:.1f} | {epoch:.1f} | {epoch / seed_epoch:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
