"""Images per second of the Trainer's input pipeline when it decodes every pass (no cache), against
the images per second of the training step it feeds, on this machine.

  .venv/bin/python bench/bench_input_pipeline.py [--photos 192] [--seconds 4] [--steps 4]

Input: serialized tf.Examples held in memory, batched, parsed and decoded by Transform's own functions
(`preprocessing.decode_encoded_images`: components/images.decode_to_pixels, i.e. JPEG decode and
bilinear antialiased resize to the training shape, then /255; `preprocessing.decode_images` for
MNIST's raw uint8 bytes) in a parallel map (AUTOTUNE), unbatched and rebatched as the Trainer does,
prefetched. The photos are JPEGs of mixed sizes (160x120 to 1024x768, RGB, random smooth content),
written to a temporary folder and read back. The model: one training step (`trainer.compiled_model`:
network, triplet loss, Adam; float32) on a cached batch, after warm-up steps. Target: input >= 2x model.
Each row runs in the same process, one after the other; on a shared machine run it twice.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)

# isort: split
import numpy as np
import tensorflow as tf

from triplet_tfx.components.data import preprocessing
from triplet_tfx.components.data.data_sources import IMAGE_KEY, LABEL_KEY

SPEC = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
# (label, network, training shape, batch, encoded): the tutorial at MNIST's shape, a backbone on photos.
ROWS = [
    ("tutorial", "tutorial_cnn", (28, 28, 1), 32, False),
    ("mobilenet_v3_small", "mobilenet_v3_small", (224, 224, 3), 32, True),
]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def example(image: bytes, label: int) -> bytes:
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
        )
    ).SerializeToString()


def jpeg_examples(n: int, folder: str) -> list:
    """n JPEG files of mixed sizes written into `folder`, read back as tf.Examples."""
    rng = np.random.default_rng(0)
    sizes = [(120, 160), (240, 320), (480, 640), (600, 800), (768, 1024), (224, 224)]
    records = []
    for i in range(n):
        height, width = sizes[i % len(sizes)]
        # Smooth random content (an upsampled noise image) compresses like a photo, unlike pixel noise.
        small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
        pixels = tf.cast(tf.image.resize(small[None], [height, width])[0], tf.uint8)
        path = os.path.join(folder, f"photo-{i}.jpg")
        tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=90))
        records.append(example(tf.io.read_file(path).numpy(), i % 10))
    return records


def mnist_examples(n: int) -> list:
    rng = np.random.default_rng(0)
    return [example(rng.integers(0, 256, 784, dtype=np.uint8).tobytes(), i % 10) for i in range(n)]


def input_rate(records: list, image_shape, encoded: bool, batch: int, seconds: float) -> float:
    """Images per second of parse + decode (+ resize) + batching, repeated over `records`."""

    def transformed(serialized):
        features = tf.io.parse_example(serialized, SPEC)
        decode = preprocessing.decode_encoded_images if encoded else preprocessing.decode_images
        return decode(features[IMAGE_KEY], image_shape), features[LABEL_KEY]

    dataset = (
        tf.data.Dataset.from_tensor_slices(records)
        .repeat()
        .batch(1024 if not encoded else 64)  # transformed_batches maps chunks of 1024 records
        .map(transformed, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
        .batch(batch)
        .prefetch(tf.data.AUTOTUNE)
    )
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += int(next(iterator)[0].shape[0])
    return images / (time.perf_counter() - start)


def model_rate(network: str, image_shape, batch: int, steps: int) -> float:
    """Images per second of the training step at `batch` (float32, random weights)."""
    from triplet_tfx.components.config import TrainConfig
    from triplet_tfx.components.training import trainer

    train = TrainConfig(
        network=network,
        backbone_weights="none",
        batch_size=batch,
        examples_per_class=4,
        dropout=0.0 if network != "tutorial_cnn" else 0.3,
    )
    rng = np.random.default_rng(0)
    images = rng.random((batch, *image_shape), np.float32)
    labels = np.repeat(np.arange(batch // 4), 4).astype(np.int64)
    batches = tf.data.Dataset.from_tensors((images, labels)).cache().repeat()
    model = trainer.compiled_model(image_shape, train, {"epochs": 1, "steps_per_epoch": steps})
    model.fit(batches, epochs=1, steps_per_epoch=2, verbose=0)
    start = time.perf_counter()
    model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
    return batch * steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=192, help="JPEG files generated (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per input row (default %(default)s)")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per model row (default %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-input-") as folder:
        photos = jpeg_examples(args.photos, folder)
    mnist = mnist_examples(4096)
    print(
        f"{cpu_model()}, {os.cpu_count()} logical CPUs; TensorFlow {tf.__version__}; "
        f"{datetime.date.today().isoformat()}"
    )
    print(
        "| network | training shape | input | batch | input images/s | training images/s | input / training |\n"
        "|---|---|---|---:|---:|---:|---:|"
    )
    worst = float("inf")
    for label, network, shape, batch, encoded in ROWS:
        source = f"JPEG {args.photos} files, 120x160..768x1024" if encoded else "MNIST raw uint8 bytes"
        fed = input_rate(photos if encoded else mnist, shape, encoded, batch, args.seconds)
        trained = model_rate(network, shape, batch, args.steps)
        worst = min(worst, fed / trained)
        print(
            f"| {label} | {'x'.join(map(str, shape))} | {source} | {batch} | {fed:,.0f} | {trained:,.0f} | "
            f"{fed / trained:.1f}x |",
            flush=True,
        )
    print(f"target input >= 2x training: {'met' if worst >= 2 else 'NOT met'} (worst {worst:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
