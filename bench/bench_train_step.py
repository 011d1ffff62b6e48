"""Milliseconds per training step of the project's network and loss, by layer arithmetic,
dropout and XLA, on random 28x28x1 images in class-balanced batches (8 classes x 32).

  .venv/bin/python bench/bench_train_step.py [--batch-size 256] [--steps 40]

Each setting runs in its own process (a dtype policy and XLA state are per process) after
5 warm-up steps; the figure is the mean over --steps steps of `model.fit`. The class-balanced
input pipeline is timed alone too (ms per batch, no training).
"""
import argparse
import json
import subprocess
import sys
import time

SETTINGS = [  # (precision, dropout, jit_compile)
    ("float32", 0.3, False), ("float32", 0.3, True), ("mixed_bfloat16", 0.3, False),
    ("float32", 0.0, False), ("mixed_bfloat16", 0.0, False),
]


def measure(precision: str, dropout: float, jit: bool, batch_size: int, steps: int) -> float:
    import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)
    import keras
    import numpy as np
    import tensorflow as tf

    from triplet_tfx.components.training import trainer
    from triplet_tfx.pipeline.config import TrainConfig

    train = TrainConfig(batch_size=batch_size, examples_per_class=32, margin=0.2, dropout=dropout,
                        precision=precision)
    rng = np.random.default_rng(0)
    images = rng.random((4096, 28, 28, 1), np.float32)
    labels = np.tile(np.arange(8), 512).astype(np.int64)
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
    import numpy as np
    import tensorflow as tf

    from triplet_tfx.components.training import trainer
    from triplet_tfx.pipeline.config import TrainConfig

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
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one setting, as JSON
    args = parser.parse_args()
    if args.one:
        setting = json.loads(args.one)
        value = input_pipeline_ms(args.batch_size, args.steps) if setting == "input" else \
            measure(*setting, args.batch_size, args.steps)
        print(json.dumps(value))
        return 0
    print(f"| layer arithmetic | dropout | XLA | ms per step (batch {args.batch_size}) |\n|---|---:|---|---:|")
    for setting in [*SETTINGS, "input"]:
        out = subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size), "--steps",
                              str(args.steps), "--one", json.dumps(setting)],
                             check=True, capture_output=True, text=True).stdout
        ms = json.loads(out.strip().splitlines()[-1])
        if setting == "input":
            print(f"| class-balanced input pipeline alone (60k examples, 10 classes) | | | {ms:.1f} |")
        else:
            precision, dropout, jit = setting
            print(f"| {precision} | {dropout} | {'yes' if jit else 'no'} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
