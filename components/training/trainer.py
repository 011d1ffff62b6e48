"""The Trainer's `run_fn`: input pipeline, optimizer, loss, layer arithmetic and the fit.

It trains the network of `network.py` with the project's triplet losses and exports the serving
model (`components/serving/export.py`).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Dict, List, Set

import keras
import tensorflow as tf
import tensorflow_transform as tft

from triplet_tfx.components.data.data_sources import IMAGE_KEY, LABEL_KEY
from triplet_tfx.components.serving.export import export_serving_model
from triplet_tfx.components.training import batching, losses
from triplet_tfx.components.training.network import build_model
from triplet_tfx.pipeline.config import PipelineConfig, TrainConfig

logger = logging.getLogger(__name__)


def choose_precision(gpu_compute_capabilities: List[tuple], cpu_flags: Set[str]) -> str:
    """What `precision="auto"` means on a machine: float16 on GPUs with tensor cores (compute
    capability 7.0+), bfloat16 on CPUs with native bfloat16 arithmetic, else float32 (bfloat16
    emulated in software is slower than float32)."""
    if gpu_compute_capabilities:
        return "mixed_float16" if min(gpu_compute_capabilities) >= (7, 0) else "float32"
    if cpu_flags & {"avx512_bf16", "amx_bf16"}:
        return "mixed_bfloat16"
    return "float32"


def machine_precision(precision: str) -> str:
    """`precision`, with "auto" resolved for the devices of this process."""
    if precision != "auto":
        return precision
    gpus = [tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
            for gpu in tf.config.list_physical_devices("GPU")]
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = {flag for line in cpuinfo if line.startswith("flags") for flag in line.split()}
    except OSError:  # not Linux
        flags = set()
    return choose_precision(gpus, flags)


def compiled_model(image_shape, train: TrainConfig, plan: Dict[str, int]) -> keras.Model:
    """The network to train, with its optimizer and loss."""
    precision = machine_precision(train.precision)
    logger.info("Layer arithmetic: %s (precision=%s)", precision, train.precision)
    model = build_model(image_shape, train.embedding_dim, precision, train.dropout, train.network)
    optimizer = keras.optimizers.Adam(learning_rate(train, plan))
    if precision == "mixed_float16":
        # float16 gradients underflow without loss scaling; Keras adds it only when the global
        # dtype policy (not the layers' own, as here) is mixed_float16.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss=make_loss(train))
    return model


def make_loss(train: TrainConfig) -> keras.losses.Loss:
    if train.loss == "hard":
        return losses.TripletHardLoss(margin=train.margin, soft=train.soft,
                                      distance_metric=train.distance_metric)
    return losses.TripletSemiHardLoss(margin=train.margin, distance_metric=train.distance_metric)


def read_transformed(file_patterns: List[str], tft_output: tft.TFTransformOutput) -> tf.data.Dataset:
    """Unbatched (image, label) pairs from Transform's gzipped tf.Example output, cached in memory."""
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no transformed examples match {file_patterns}")
    feature_spec = tft_output.transformed_feature_spec()
    return (tf.data.TFRecordDataset(files, compression_type="GZIP")
            .batch(1024)
            .map(lambda records: tf.io.parse_example(records, feature_spec), num_parallel_calls=tf.data.AUTOTUNE)
            .map(lambda f: (f[IMAGE_KEY], f[LABEL_KEY]))
            .unbatch()
            .cache())


def count(examples: tf.data.Dataset) -> int:
    return int(examples.reduce(0, lambda n, _: n + 1))


def training_batches(examples: tf.data.Dataset, train: TrainConfig) -> tf.data.Dataset:
    if train.examples_per_class:
        batches = batching.class_balanced_batches(examples, train.batch_size, train.examples_per_class,
                                                  seed=train.seed)
    else:
        # The tutorial shuffles and batches; we reshuffle every epoch, over up to 100k examples
        # (all of MNIST).
        batches = examples.shuffle(100_000, seed=train.seed, reshuffle_each_iteration=True).batch(train.batch_size)
    batches = batches.repeat()
    if train.augment_shift:
        # "nearest" repeats the border, which is background for centred objects such as digits.
        shift = keras.layers.RandomTranslation(train.augment_shift, train.augment_shift, fill_mode="nearest",
                                               seed=train.seed)
        batches = batches.map(lambda images, labels: (shift(images, training=True), labels),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


def step_plan(num_examples: int, train: TrainConfig) -> Dict[str, int]:
    """Epochs and steps per epoch: full epochs, capped at max_steps in all."""
    steps_per_epoch = max(1, math.ceil(num_examples / train.batch_size))
    total = steps_per_epoch * train.epochs
    if train.max_steps:
        total = min(total, train.max_steps)
    epochs = math.ceil(total / steps_per_epoch)
    return {"epochs": epochs, "steps_per_epoch": math.ceil(total / epochs)}


def learning_rate(train: TrainConfig, plan: Dict[str, int]):
    if train.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(train.learning_rate, plan["epochs"] * plan["steps_per_epoch"])
    return train.learning_rate


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (GenericExecutor)."""
    config = PipelineConfig.from_dict({k: fn_args.custom_config[k] for k in ("data", "train")})
    train = config.train
    keras.utils.set_random_seed(train.seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)

    train_examples = read_transformed(fn_args.train_files, tft_output)
    num_train = count(train_examples)  # also fills the cache
    plan = step_plan(num_train, train)
    logger.info("Training on %d examples: %d epoch(s) x %d steps, batch %d, %s loss",
                 num_train, plan["epochs"], plan["steps_per_epoch"], train.batch_size, train.loss)
    eval_examples = read_transformed(fn_args.eval_files, tft_output)
    num_eval = count(eval_examples)  # also fills the cache
    logger.info("Validation loss on %d eval examples after the last epoch", num_eval)
    eval_batch = max(train.batch_size, 256)
    # A known length lets Keras stop at the last batch instead of running into the end of the
    # data ("Local rendezvous is aborting ... End of sequence", "Your input ran out of data").
    validation_batches = eval_examples.batch(eval_batch).apply(
        tf.data.experimental.assert_cardinality(math.ceil(num_eval / eval_batch)))

    model = compiled_model(config.data.image_shape, train, plan)
    fit_start = time.time()
    model.fit(
        training_batches(train_examples, train),
        # Once, at the end: validating after every epoch left about half of the following epochs
        # 1.7x slower on CPU (Keras 3.12, TF 2.16, 2 cores; not understood). The evaluator measures
        # the embedding quality that matters.
        validation_data=validation_batches,
        validation_freq=plan["epochs"],
        callbacks=[keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")],
        verbose=1 if sys.stdout.isatty() else 2,  # a live progress bar on a terminal, else a line per epoch
        **plan,
    )
    fit_end = time.time()
    logger.info("Fit in %.1f s (%d epoch(s), validation after the last)", fit_end - fit_start, plan["epochs"])
    export_serving_model(model, tft_output, config, fn_args.serving_model_dir)
    logger.info("Exported the serving model in %.1f s", time.time() - fit_end)
