"""Training in this process (`train_and_export`): input pipeline, optimizer, loss, layer arithmetic,
strategy and the fit.

It trains the network of `network.py` with the project's triplet losses under the strategy of
`distribute.py`, backs the training state up (`checkpoints.py`), and exports the serving model
(`components/training/export.py`). The Trainer's `run_fn` (`run.py`) calls it, or runs `worker.py`'s
entry point, which calls it, in `train.workers` local processes or a TFJob's pods.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from triplet_tfx.components import machine
from triplet_tfx.components.config import PipelineConfig, TrainConfig
from triplet_tfx.components.contract import IMAGE_KEY, LABEL_KEY
from triplet_tfx.components.training import backbones, batch_parts, batching, checkpoints, distribute, losses
from triplet_tfx.components.training.export import export_serving_model
from triplet_tfx.components.training.fused_adam import FusedAdam
from triplet_tfx.components.training.network import build_model

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
    gpus = [
        tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    return choose_precision(gpus, machine.cpu_flags())


def steps_per_execution(plan: Dict[str, int], train: TrainConfig, replicas: int = 1, most: int = 32) -> int:
    """Training steps per call into TensorFlow. Keras' Python runs between calls only: one step per
    call left the 2 CPU cores idle about a quarter of the time (12.3 vs 8.7 ms per step at 25 steps
    per call, bench in README). A call runs whole steps, so the number divides the epoch's steps and
    the backup interval: every epoch end and backup falls between two calls. With several replicas,
    one step per call: the replicas' collective ops inside Keras' multi-step loop fail under
    MultiWorkerMirroredStrategy (TF 2.16: "You must feed a value for placeholder tensor ...")."""
    if replicas > 1:
        return 1
    common = math.gcd(plan["steps_per_epoch"], train.checkpoint_every)
    return max(d for d in range(1, min(most, common) + 1) if common % d == 0)


# Training phases (--freeze-backbone-epochs): `all` (no freezing: everything at the learning rate),
# `frozen` (the first N epochs: the head alone, the backbone frozen, its batch norm in inference
# mode) and `fine_tune` (then everything at learning_rate x fine_tune_lr_factor, a fresh optimizer).
ALL, FROZEN, FINE_TUNE = "all", "frozen", "fine_tune"


def frozen_steps(plan: Dict[str, int], train: TrainConfig) -> int:
    """Steps of the `frozen` phase: whole epochs (so that it ends between two fits), capped at the plan's."""
    return min(train.freeze_backbone_epochs, plan["epochs"]) * plan["steps_per_epoch"]


def phase_at(step: int, plan: Dict[str, int], train: TrainConfig) -> str:
    """The phase that trains step `step` (0-based) of the plan."""
    if not train.freeze_backbone_epochs:
        return ALL
    return FROZEN if step < frozen_steps(plan, train) else FINE_TUNE


def compiled_model(
    image_shape,
    train: TrainConfig,
    plan: Dict[str, int],
    replicas: int = 1,
    steps_per_call: int = 1,
    phase: Optional[str] = None,
    parts: int = 1,
) -> keras.Model:
    """The network to train, with its optimizer and loss, compiled for `phase` (default: the
    first step's); with `parts` > 1, run on that many parts of each batch (batch_parts.py). Under a
    strategy, build it in its scope."""
    precision = machine_precision(train.precision)
    logger.info("Layer arithmetic: %s (precision=%s)", precision, train.precision)
    model = build_model(
        image_shape, train.embedding_dim, precision, train.dropout, train.network, train.backbone_weights
    )
    if parts > 1:
        model = batch_parts.BatchParts(model, parts)
    compile_phase(model, train, plan, phase or phase_at(0, plan, train), replicas, steps_per_call)
    return model


def compile_phase(
    model: keras.Model, train: TrainConfig, plan: Dict[str, int], phase: str, replicas: int = 1, steps_per_call: int = 1
) -> None:
    """(Re)compiles `model` for a training phase: the backbone frozen or not, a fresh optimizer at the
    phase's learning rate. Under a strategy, call it in the strategy's scope."""
    network = batch_parts.network_of(model)
    backbone = backbones.backbone_of(network)
    if backbone is not None:
        # Keras 3: a frozen BatchNormalization also runs in inference mode (its moving statistics stay).
        backbone.trainable = phase != FROZEN
    # One device: Adam's update in one kernel per variable (fused_adam.py); several replicas: Keras'
    # Adam, whose updates the strategy routes to each replica's copies.
    adam = FusedAdam if replicas == 1 else keras.optimizers.Adam
    optimizer = adam(learning_rate(train, plan, phase))
    if any(layer.dtype_policy.name == "mixed_float16" for layer in network.layers):
        # float16 gradients underflow without loss scaling; Keras adds it only when the global
        # dtype policy (not the layers' own, as here) is mixed_float16.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=make_loss(train, distribute.uses_global_mining(train, replicas)),
        steps_per_execution=steps_per_call,
    )
    # The optimizer's slots now, not in the first step: variables created while tf.function traces
    # the step make it trace the step a second time (0.4-0.6 s of the fit's first call on 2 cores).
    optimizer.build(model.trainable_variables)


def make_loss(train: TrainConfig, global_batch: bool = False) -> keras.losses.Loss:
    if train.loss == "hard":
        return losses.TripletHardLoss(
            margin=train.margin, soft=train.soft, distance_metric=train.distance, global_batch=global_batch
        )
    return losses.TripletSemiHardLoss(margin=train.margin, distance_metric=train.distance, global_batch=global_batch)


# Decoded examples are cached in memory when the split's float32 images take at most this share of
# the machine's memory; the shuffle buffer of a streamed split's plain batches holds at most
# SHUFFLE_MEMORY_SHARE of it.
CACHE_MEMORY_SHARE = 0.25
SHUFFLE_MEMORY_SHARE = 0.125
SHUFFLE_BUFFER = 100_000  # all of MNIST


def machine_memory_bytes() -> int:
    """Physical memory of this machine (8 GiB where os.sysconf cannot tell)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 8 << 30


def decoded_bytes(num_examples: int, image_shape: Sequence[int]) -> int:
    """Memory of `num_examples` float32 images of `image_shape`."""
    return num_examples * math.prod(image_shape) * 4


def fits_in_cache(
    num_examples: int, image_shape: Sequence[int], memory_bytes: Optional[int] = None, share: float = CACHE_MEMORY_SHARE
) -> bool:
    """Whether a split's decoded images fit the in-memory cache's budget (`share` of the memory)."""
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    return decoded_bytes(num_examples, image_shape) <= share * memory


def shuffle_buffer(image_shape: Sequence[int], memory_bytes: Optional[int] = None) -> int:
    """Elements in the shuffle buffer of a streamed split's plain batches: SHUFFLE_BUFFER, unless that
    many images take more than SHUFFLE_MEMORY_SHARE of the memory (224x224x3 photos: 600 KB each)."""
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    return int(max(1_000, min(SHUFFLE_BUFFER, SHUFFLE_MEMORY_SHARE * memory // decoded_bytes(1, image_shape))))


def example_files(file_patterns: List[str]) -> List[str]:
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no examples match {file_patterns}")
    return files


def count_records(files: List[str]) -> int:
    """Examples in ExampleGen's gzipped TFRecord files, without parsing or decoding them."""
    return count_batched(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096))


def transformed_batches(files: List[str], tft_output: tft.TFTransformOutput) -> tf.data.Dataset:
    """Batches of (image, label): ExampleGen's gzipped tf.Examples through the Transform graph, in parallel."""
    raw_spec = tft_output.raw_feature_spec()
    transform = tft_output.transform_features_layer()

    # Not through AutoGraph: it would spend seconds rewriting tf_keras' model-call code for nothing.
    @tf.autograph.experimental.do_not_convert
    def transformed(records):
        features = transform(tf.io.parse_example(records, raw_spec))
        return features[IMAGE_KEY], features[LABEL_KEY]

    return (
        tf.data.TFRecordDataset(files, compression_type="GZIP")
        .batch(1024)
        .map(transformed, num_parallel_calls=tf.data.AUTOTUNE)
    )


@dataclasses.dataclass(frozen=True)
class Split:
    """A split's examples: `examples`, unbatched (image, label) pairs, and their number, `size`. A split
    held in memory also has `whole`, a dataset of one cached element, (images, labels) of all its
    examples, and those `labels` as a NumPy array (training batches are gathered from `whole`)."""

    examples: tf.data.Dataset
    size: int
    whole: Optional[tf.data.Dataset] = None
    labels: Optional[np.ndarray] = None

    @classmethod
    def from_whole(cls, whole: tf.data.Dataset) -> "Split":
        """The split of `whole` (one element, or none: an empty split); reads it to the end once, which
        fills its cache."""
        labels = np.zeros([0], np.int64)
        for _, labels_tensor in whole:
            labels = labels_tensor.numpy()
        return cls(examples=whole.unbatch(), size=len(labels), whole=whole, labels=labels)


def read_split(
    file_patterns: List[str], tft_output: tft.TFTransformOutput, image_shape: Sequence[int], split: str
) -> Split:
    """A split's examples (`transformed_batches`), held in memory as one cached element when the
    decoded split fits (fits_in_cache; counted by the pass that fills the cache), else decoded at
    every pass and counted from the raw records (no decoding). Filling the cache holds the decoded
    batches and the one tensor at once, for a moment: twice the split (at most half the memory)."""
    files = example_files(file_patterns)
    num_records = count_records(files)
    cache = fits_in_cache(num_records, image_shape)
    budget = CACHE_MEMORY_SHARE * machine_memory_bytes()
    logger.info(
        "%s split: %d examples, %.2f GB as float32 %s images, %s %.1f GB (%.0f%% of the memory): %s",
        split,
        num_records,
        decoded_bytes(num_records, image_shape) / 1e9,
        "x".join(map(str, image_shape)),
        "within" if cache else "over",
        budget / 1e9,
        CACHE_MEMORY_SHARE * 100,
        "cached in memory" if cache else "decoded at every pass (parallel map, prefetch)",
    )
    batches = transformed_batches(files, tft_output)
    if not cache:
        return Split(examples=batches.unbatch().prefetch(tf.data.AUTOTUNE), size=num_records)
    # rebatch: one element of all examples, without passing them through tf.data one by one.
    return Split.from_whole(batches.rebatch(max(1, num_records)).cache())


def count_batched(batches: tf.data.Dataset) -> int:
    """The examples in a dataset of batches (a tensor, or a nest of tensors of equal batch size)."""
    return int(
        batches.reduce(
            tf.constant(0, tf.int64),
            lambda n, batch: n + tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0],
        )
    )


def training_batches(split: Split, train: TrainConfig) -> tf.data.Dataset:
    """The split's training batches, endless: class-balanced (gathered from memory, else streamed)
    when train.examples_per_class is set, else shuffled; shifted when train.augment_shift is set."""
    examples = split.examples
    if train.examples_per_class and split.whole is not None:
        indices = batching.class_balanced_indices(split.labels, train.batch_size, train.examples_per_class, train.seed)
        batches = batching.gathered_batches(split.whole, indices)
    elif train.examples_per_class:
        batches = batching.class_balanced_batches(examples, train.batch_size, train.examples_per_class, seed=train.seed)
    elif split.whole is not None:
        # The tutorial shuffles and batches; we reshuffle all of the split every epoch.
        batches = batching.gathered_batches(
            split.whole, batching.shuffled_indices(split.size, train.batch_size, train.seed)
        )
    else:
        # Streamed: a shuffle buffer of up to 100k examples (all of MNIST), reshuffled every epoch.
        buffer = (
            shuffle_buffer(examples.element_spec[0].shape)
            if examples.element_spec[0].shape.is_fully_defined()
            else SHUFFLE_BUFFER
        )
        # A static batch size where no batch is short (the batch size divides the split): the step's
        # graph then knows its shape, and the loss builds one of its two sorting paths.
        batches = (
            examples.shuffle(buffer, seed=train.seed, reshuffle_each_iteration=True)
            .batch(train.batch_size, drop_remainder=split.size % train.batch_size == 0)
            .repeat()
        )
    if train.augment_shift:
        # "nearest" repeats the border, which is background for centred objects such as digits.
        shift = keras.layers.RandomTranslation(
            train.augment_shift, train.augment_shift, fill_mode="nearest", seed=train.seed
        )
        batches = batches.map(
            lambda images, labels: (shift(images, training=True), labels), num_parallel_calls=tf.data.AUTOTUNE
        )
    return with_fit_options(batches.prefetch(tf.data.AUTOTUNE))


def with_fit_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The tf.data options of the fit's inputs (training and validation batches).

    - Multi-worker input: every worker runs the same seeded pipeline and keeps only its replicas'
      slices of each global batch (tf.data's DATA auto-sharding), so each global batch is the one a
      single device would see, with each example once across workers. (FILE sharding would give each
      worker different files, and class-balanced batches only the classes of its files.)
    - No autotuning thread: destroying an iterator waits for it, and it can be asleep for up to a
      minute between optimisations (TF 2.16): the fit's return waited 21-32 s after the last epoch in
      3 of 7 runs of the main job on a 2-core Intel Xeon (bench/README.md). AUTOTUNE parallel maps
      then run as many calls as tf.data's thread pool has threads, and AUTOTUNE prefetch buffers
      still grow while the consumer waits."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.autotune.enabled = False
    return dataset.with_options(options)


def validation_data(split: Split, batch_size: int) -> Tuple[tf.data.Dataset, int]:
    """The split's validation batches and the examples they hold: batches of the training batch
    size, so that the validation loss mines as the training loss does, all of one size (the last,
    short batch left out, unless it is the only one): the loss's graph then knows the batch's size
    and holds one of its two sorting paths (0.6 s less for MNIST's 10,000 eval examples on 2 cores)."""
    whole_batches = split.size // batch_size
    if whole_batches:
        batches = split.examples.batch(batch_size, drop_remainder=True)
        count, examples = whole_batches, whole_batches * batch_size
    else:
        batches = split.examples.batch(batch_size)
        count, examples = min(split.size, 1), split.size
    # A known length lets Keras stop at the last batch instead of running into the end of the
    # data ("Local rendezvous is aborting ... End of sequence", "Your input ran out of data").
    return batches.apply(tf.data.experimental.assert_cardinality(count)), examples


def step_plan(num_examples: int, train: TrainConfig) -> Dict[str, int]:
    """Epochs and steps per epoch: full epochs; with max_steps, at most that many steps in all
    (equal epochs, so up to epochs - 1 fewer)."""
    steps_per_epoch = max(1, math.ceil(num_examples / train.batch_size))
    total = steps_per_epoch * train.epochs
    if train.max_steps:
        total = min(total, train.max_steps)
    epochs = math.ceil(total / steps_per_epoch)
    return {"epochs": epochs, "steps_per_epoch": total // epochs}


def learning_rate(train: TrainConfig, plan: Dict[str, int], phase: str = ALL):
    """The phase's learning rate: learning_rate, x fine_tune_lr_factor when fine-tuning; `cosine`
    decays it to 0 over the phase's steps (each phase has an optimizer of its own)."""
    total = plan["epochs"] * plan["steps_per_epoch"]
    rate, steps = train.learning_rate, total
    if phase == FROZEN:
        steps = frozen_steps(plan, train)
    elif phase == FINE_TUNE:
        rate, steps = rate * train.fine_tune_lr_factor, total - frozen_steps(plan, train)
    if train.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(rate, max(1, steps))
    return rate


def fit_from(
    model: keras.Model,
    make_batches: Callable[[], tf.data.Dataset],
    plan: Dict[str, int],
    start_step: int,
    switch_step: Optional[int] = None,
    on_switch: Optional[Callable[[], None]] = None,
    **fit_args,
) -> None:
    """model.fit from step `start_step` to the plan's end, on the batches an uninterrupted run sees
    from there. Keras starts every fit at the first batch of an epoch, so a resume inside an epoch
    first finishes that epoch in a fit of its own. Each fit gets a fresh input pipeline: a second
    iterator over the same one would draw new shuffle orders (reshuffle_each_iteration); a fresh,
    seeded one replays the uninterrupted run's batches when the first `step` are skipped.
    `on_switch` (the fine-tuning recompile) runs when the training reaches `switch_step`, an epoch
    boundary: the fits stop there. A start at or after it is compiled for the later phase already."""
    steps_per_epoch = plan["steps_per_epoch"]
    switching = on_switch is not None and switch_step is not None and start_step < switch_step
    if switching and switch_step % steps_per_epoch:
        raise ValueError(f"switch step {switch_step} is not an epoch boundary ({steps_per_epoch} steps per epoch)")
    step = start_step
    while step < plan["epochs"] * steps_per_epoch:
        if switching and step == switch_step:
            on_switch()
        epoch, done = divmod(step, steps_per_epoch)
        end_epoch = epoch + 1 if done else plan["epochs"]
        if switching and step < switch_step:
            end_epoch = min(end_epoch, switch_step // steps_per_epoch)
        model.fit(
            make_batches().skip(step) if step else make_batches(),
            initial_epoch=epoch,
            epochs=end_epoch,
            steps_per_epoch=steps_per_epoch - done,
            **fit_args,
        )
        step = end_epoch * steps_per_epoch


def restored_model(
    image_shape,
    train: TrainConfig,
    plan: Dict[str, int],
    backup: str,
    strategy: tf.distribute.Strategy,
    steps_per_call: int = 1,
    parts: int = 1,
) -> Tuple[keras.Model, int]:
    """The compiled model, with the backup's training state when there is one; and the step to start
    from. A backup of the fine-tuning phase holds that phase's optimizer (and an unfrozen backbone's
    trainable variables): the model is compiled for the backup's phase before loading it."""
    saved = checkpoints.read_state(backup)
    phase = saved.get("phase", phase_at(saved["step"], plan, train)) if saved else phase_at(0, plan, train)
    with strategy.scope():  # the optimizer's variables are created with the model
        model = compiled_model(image_shape, train, plan, strategy.num_replicas_in_sync, steps_per_call, phase, parts)
        start = checkpoints.restore(model, backup)
    if start:
        logger.info(
            "Resuming from step %d of %d, phase %s (backup %s)",
            start,
            plan["epochs"] * plan["steps_per_epoch"],
            phase,
            backup,
        )
    return model, start


def fit_phases(
    model: keras.Model,
    make_batches: Callable[[], tf.data.Dataset],
    plan: Dict[str, int],
    start_step: int,
    train: TrainConfig,
    strategy: Optional[tf.distribute.Strategy] = None,
    steps_per_call: int = 1,
    **fit_args,
) -> None:
    """fit_from, with --freeze-backbone-epochs' switch: at the end of the frozen epochs the model is
    recompiled (in the strategy's scope) to fine-tune everything at the lower learning rate."""
    strategy = strategy or tf.distribute.get_strategy()
    switch_step = frozen_steps(plan, train) if train.freeze_backbone_epochs else None
    if switch_step is not None and start_step < switch_step:
        logger.info(
            "Backbone frozen for steps %d-%d (the head alone), then fine-tuned at learning rate x %g",
            start_step,
            switch_step - 1,
            train.fine_tune_lr_factor,
        )

    def fine_tune():
        logger.info(
            "Step %d: unfreezing the backbone; fine-tuning everything at learning rate %g",
            switch_step,
            train.learning_rate * train.fine_tune_lr_factor,
        )
        with strategy.scope():
            # It builds the fine-tuning optimizer's slots now: a backup at this step holds them.
            compile_phase(model, train, plan, FINE_TUNE, strategy.num_replicas_in_sync, steps_per_call)

    fit_from(model, make_batches, plan, start_step, switch_step, fine_tune, **fit_args)


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of the model's weights: equal on every worker of a synchronous run."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()


def train_and_export(args: Any, tf_config: Dict[str, Any]) -> None:
    """Trains in this process and, on the chief, exports the serving model. `args`: the Trainer's
    FnArgs or a worker's spec (the same fields); `tf_config`: this process's TF_CONFIG ({}: none).
    Other workers write TensorBoard logs and backups to a temporary folder, removed at the end."""
    config = PipelineConfig.from_dict({k: args.custom_config[k] for k in ("data", "train")})
    train = config.train
    chosen = distribute.chosen_strategy(train, tf_config)
    parts = batch_parts.parts_in_this_process(train, chosen)  # before the first op: it sets TensorFlow's threads
    # First: MultiWorkerMirroredStrategy must be created before any other TensorFlow operation.
    strategy = distribute.make_strategy(chosen)
    distribute.log_strategy(strategy, train)
    chief = distribute.is_chief(tf_config)
    keras.utils.set_random_seed(train.seed)
    tft_output = tft.TFTransformOutput(args.transform_output)

    image_shape = config.data.image_shape
    train_split = read_split(args.train_files, tft_output, image_shape, "train")
    num_train = train_split.size
    if train.examples_per_class and train_split.whole is None:
        # batching.class_balanced_batches reads its input once per class: uncached, each image is decoded
        # once per class and pass.
        logger.warning(
            "Class-balanced batches (--examples-per-class) of a train split that is not cached in "
            "memory decode every image once per class at every pass: expect a slow input pipeline"
        )
    plan = step_plan(num_train, train)
    steps_per_call = steps_per_execution(plan, train, strategy.num_replicas_in_sync)
    logger.info(
        "Training on %d examples: %d epoch(s) x %d steps (%d per call), batch %d%s, %s loss",
        num_train,
        plan["epochs"],
        plan["steps_per_epoch"],
        steps_per_call,
        train.batch_size,
        f" in {parts} parts side by side, each op on one thread" if parts > 1 else "",
        train.loss,
    )
    eval_split = read_split(args.eval_files, tft_output, image_shape, "eval")
    validation_batches, num_validated = validation_data(eval_split, train.batch_size)
    logger.info(
        "Validation loss on %d of %d eval examples (batches of %d) after the last epoch",
        num_validated,
        eval_split.size,
        train.batch_size,
    )

    backup = checkpoints.backup_dir(
        args.model_run_dir, [*args.train_files, *args.eval_files, args.transform_output], args.custom_config
    )
    scratch = None if chief else tempfile.mkdtemp(prefix="triplet-tfx-worker-")
    try:
        model, start = restored_model(image_shape, train, plan, backup, strategy, steps_per_call, parts)
        total = plan["epochs"] * plan["steps_per_epoch"]
        fit_start, fit_cpu_start = time.time(), time.process_time()
        fit_phases(
            model,
            lambda: training_batches(train_split, train),
            plan,
            start,
            train,
            strategy,
            steps_per_call,
            # Once, at the end: validating after every epoch left about half of the following epochs
            # 1.7x slower on CPU (Keras 3.12, TF 2.16, 2 cores; not understood). The evaluator measures
            # the embedding quality that matters.
            validation_data=with_fit_options(validation_batches),
            validation_freq=plan["epochs"],
            callbacks=[
                keras.callbacks.TensorBoard(
                    log_dir=args.model_run_dir if chief else os.path.join(scratch, "logs"), update_freq="epoch"
                ),
                checkpoints.StepBackup(
                    backup if chief else os.path.join(scratch, "backup"),
                    train.checkpoint_every,
                    start,
                    state=lambda step: {"phase": phase_at(step, plan, train)},
                ),
            ],
            verbose=1 if sys.stdout.isatty() else 2,  # a live progress bar on a terminal, else a line per epoch
        )
        fit_end = time.time()
        # CPU time too: on a shared machine the wall time varies with what else runs, the work does not.
        logger.info(
            "Fit in %.1f s, %.1f s of CPU (%d epoch(s), validation after the last)",
            fit_end - fit_start,
            time.process_time() - fit_cpu_start,
            plan["epochs"],
        )
        logger.info(
            "Trained %d steps (optimizer step %d); weights sha256 %s",
            total,
            int(model.optimizer.iterations.numpy()),
            weights_digest(model),
        )
        if chief:
            export_serving_model(batch_parts.network_of(model), tft_output, config, args.serving_model_dir)
            logger.info("Exported the serving model in %.1f s", time.time() - fit_end)
            checkpoints.remove(backup)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
