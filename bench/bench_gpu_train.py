"""Images per second of the Trainer's training step on the GPU(s) of this machine, by global batch,
mining (global batch vs each replica's own), layer arithmetic and XLA.

  .venv/bin/python bench/bench_gpu_train.py                       # the full grid (52 settings)
  .venv/bin/python bench/bench_gpu_train.py --batches 256,4096 --precisions mixed_float16 --xla on
  .venv/bin/python bench/bench_gpu_train.py --list                # the settings only (no TensorFlow)
  .venv/bin/python bench/bench_gpu_train.py --batches 256 --backbones mobilenet_v3_small --backbone-batches 128

Besides the tutorial network on 28x28x1 images, the grid holds Keras Applications backbones
(--backbones, default MobileNetV3Small and ResNet50V2, random weights) on 224x224x3 images in
mixed_float16 without XLA, at --backbone-batches (global; one GPU: the whole batch).

It needs one or more NVIDIA GPUs and a TensorFlow that sees them (the kubeflow/Dockerfile.gpu image,
or `pip install tensorflow[and-cuda]==<the pinned version>`); without one it says so and exits 2.
Every GPU is used (MirroredStrategy; CUDA_VISIBLE_DEVICES picks them). The network, loss and
optimizer are the Trainer's (`trainer.compiled_model`, built in the strategy's scope), the batch is
class-balanced (32 examples per class, whole classes on each replica), one batch cached in memory and
repeated, so the figure is the training step (plus the batch's copy to the GPUs), without the input
pipeline's work: the mean over --steps steps after --warmup steps (compilation). Each setting runs in
its own process: dtype policies and XLA state are per process. A setting that runs out of GPU memory
is reported as such.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from typing import Dict, List, Optional

EXAMPLES_PER_CLASS = 32
IMAGE_SHAPE = (28, 28, 1)
BACKBONE_IMAGE_SHAPE = (224, 224, 3)
BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_v2_b0", "resnet50_v2")
NO_GPU_EXIT = 2


def settings(args) -> List[Dict]:
    """The grid, in table order."""
    grid = []
    for batch, mining, precision, xla in itertools.product(args.batches, args.mining, args.precisions, args.xla):
        grid.append({"batch": batch, "mining": mining, "precision": precision, "xla": xla == "on"})
    for network, batch in itertools.product(args.backbones, args.backbone_batches):
        grid.append(
            {
                "batch": batch,
                "mining": "global",
                "precision": "mixed_float16",
                "xla": False,
                "network": network,
                "image": list(BACKBONE_IMAGE_SHAPE),
            }
        )
    return grid


def positive_multiples(text: str) -> List[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    bad = [v for v in values if v <= 0 or v % EXAMPLES_PER_CLASS]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"global batches must be positive multiples of {EXAMPLES_PER_CLASS} "
            f"(whole classes of {EXAMPLES_PER_CLASS} examples): {text!r}"
        )
    return values


def choices(allowed):
    def parse(text: str) -> List[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)} (comma-separated)")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--batches",
        type=positive_multiples,
        default=[256, 512, 1024, 2048, 4096, 8192],
        help="global batches, comma-separated (default 256,512,...,8192)",
    )
    parser.add_argument(
        "--mining",
        type=choices(("global", "replica")),
        default=["global", "replica"],
        help="semi-hard mining over the global batch and/or each replica's (default both)",
    )
    parser.add_argument(
        "--precisions",
        type=choices(("float32", "mixed_float16", "mixed_bfloat16")),
        default=["float32", "mixed_float16"],
        help="layer arithmetic (default float32,mixed_float16)",
    )
    parser.add_argument(
        "--xla", type=choices(("off", "on")), default=["off", "on"], help="jit_compile off and/or on (default both)"
    )
    parser.add_argument(
        "--backbones",
        type=lambda text: [] if text == "none" else choices(BACKBONES)(text),
        default=["mobilenet_v3_small", "resnet50_v2"],
        help="backbones at 224x224x3, mixed_float16 (default mobilenet_v3_small,resnet50_v2; none)",
    )
    parser.add_argument(
        "--backbone-batches",
        type=positive_multiples,
        default=[128, 256],
        help="global batches of the backbones (default 128,256)",
    )
    parser.add_argument("--steps", type=int, default=50, help="timed steps per setting (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default %(default)s)")
    parser.add_argument("--list", action="store_true", help="print the settings and exit (no TensorFlow)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one setting (JSON) in this process
    return parser


def gpu_names() -> List[str]:
    import triplet_tfx.pipeline  # noqa: F401  (pins the Keras flavour before TensorFlow loads)

    # isort: split
    import tensorflow as tf

    return [
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        for gpu in tf.config.list_physical_devices("GPU")
    ]


def class_balanced_batch(batch: int, replicas: int, image_shape=IMAGE_SHAPE):
    """Random images; labels in whole classes of EXAMPLES_PER_CLASS, contiguous, so that each
    replica's share (the strategy splits the batch in order) holds whole classes."""
    import numpy as np

    classes = batch // EXAMPLES_PER_CLASS
    if classes % replicas:
        raise ValueError(
            f"global batch {batch} = {classes} classes does not split into whole classes over {replicas} replicas"
        )
    rng = np.random.default_rng(0)
    images = rng.random((batch, *image_shape), np.float32)
    labels = np.repeat(np.arange(classes), EXAMPLES_PER_CLASS).astype(np.int64)
    return images, labels


def measure(setting: Dict, steps: int, warmup: int) -> Dict:
    """Trains `warmup` then `steps` steps of one setting; ms per step and images per second."""
    import triplet_tfx.pipeline  # noqa: F401

    # isort: split
    import tensorflow as tf

    from triplet_tfx.components.config import TrainConfig
    from triplet_tfx.components.training import trainer

    strategy = tf.distribute.MirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    network = setting.get("network", "tutorial_cnn")
    image_shape = tuple(setting.get("image", IMAGE_SHAPE))
    train = TrainConfig(
        batch_size=setting["batch"],
        examples_per_class=EXAMPLES_PER_CLASS,
        margin=0.2,
        dropout=0.0,
        learning_rate=2e-3,
        precision=setting["precision"],
        mining=setting["mining"],
        network=network,
        backbone_weights="none",
    )
    images, labels = class_balanced_batch(setting["batch"], replicas, image_shape)
    batches = tf.data.Dataset.from_tensors((images, labels)).cache().repeat()
    try:
        with strategy.scope():
            model = trainer.compiled_model(
                image_shape, train, {"epochs": 1, "steps_per_epoch": warmup + steps}, replicas
            )
        model.jit_compile = setting["xla"]
        model.fit(batches, epochs=1, steps_per_epoch=warmup, verbose=0)
        start = time.perf_counter()
        model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
        seconds = time.perf_counter() - start
    except tf.errors.ResourceExhaustedError:
        return {"replicas": replicas, "error": "out of GPU memory"}
    return {
        "replicas": replicas,
        "ms_per_step": seconds / steps * 1000,
        "images_per_second": setting["batch"] * steps / seconds,
    }


def run_one(setting: Dict, args) -> Dict:
    command = [
        sys.executable,
        __file__,
        "--one",
        json.dumps(setting),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {last[:120]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table_row(setting: Dict, result: Dict, replicas: Optional[int]) -> str:
    replicas = result.get("replicas", replicas)
    per_replica = setting["batch"] // replicas if replicas else "?"
    image = "x".join(str(d) for d in setting.get("image", IMAGE_SHAPE))
    cells = [
        setting.get("network", "tutorial_cnn"),
        image,
        setting["batch"],
        per_replica,
        setting["mining"],
        setting["precision"],
        "on" if setting["xla"] else "off",
    ]
    if "error" in result:
        cells += [result["error"], ""]
    else:
        cells += [f"{result['ms_per_step']:.1f}", f"{result['images_per_second']:,.0f}"]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.one:
        print(json.dumps(measure(json.loads(args.one), args.steps, args.warmup)))
        return 0
    grid = settings(args)
    if args.list:
        for setting in grid:
            print(json.dumps(setting))
        return 0
    gpus = gpu_names()
    if not gpus:
        print(
            "bench_gpu_train: no GPU found (TensorFlow lists no GPU device). It needs one or more NVIDIA GPUs "
            "with their driver, and a TensorFlow built with CUDA (kubeflow/Dockerfile.gpu's image, or "
            "tensorflow[and-cuda]); nothing was measured.",
            file=sys.stderr,
        )
        return NO_GPU_EXIT
    if len(gpus) == 1:
        grid = [s for s in grid if s["mining"] == "global"]  # one replica: `replica` mining is the same
    print(
        f"GPUs: {len(gpus)} x {', '.join(sorted(set(gpus)))} (MirroredStrategy); {args.steps} timed steps after "
        f"{args.warmup}; one cached batch of whole classes of {EXAMPLES_PER_CLASS}, no input pipeline"
    )
    print(
        "| network | image | global batch | per replica | mining | precision | XLA | ms per step | images/s |\n"
        "|---|---|---:|---:|---|---|---|---:|---:|"
    )
    for setting in grid:
        print(table_row(setting, run_one(setting, args), len(gpus)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
