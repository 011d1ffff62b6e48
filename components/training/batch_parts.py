"""A CPU's training step as parts of the batch side by side, each op on one core (`train.batch_parts`).

TensorFlow runs a step op by op and splits each op over the cores (its intra-op threads). The
tutorial network's ops are small (a batch of 32 images of 28x28), and two cores split them at a
loss: each op waits for its slowest share. Here the network runs on consecutive parts of the
batch instead, one part per core: each op runs on one thread, the parts' ops side by side on
TensorFlow's inter-op threads. The loss and its mining see the whole batch's embeddings,
concatenated in the batch's order, and the weights' gradient is the sum of the parts'.

The function trained is the same only when no layer mixes the examples of a batch:
`network.PER_EXAMPLE_NETWORKS` (batch normalisation does mix them; those networks train whole).
Which threads TensorFlow uses is a setting of its runtime, fixed when the process runs its first
op: `single_threaded_ops` sets it before, where it can (the local runner's start, a Trainer
process of its own), and otherwise the batch trains whole.
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from triplet_tfx.components import machine
from triplet_tfx.components.config import TrainConfig
from triplet_tfx.components.training.network import PER_EXAMPLE_NETWORKS

logger = logging.getLogger(__name__)

# `auto` splits the batch on machines of 2 to AUTO_MAX_CPUS CPUs: measured on 2; a larger machine
# keeps TensorFlow's own threading, whose ops are larger there relative to a core.
AUTO_MAX_CPUS = 4


def parts_for(train: TrainConfig, strategy: str, gpus: int, cpus: int) -> int:
    """How many parts a step's batch runs in: `train.batch_parts`, or with 0 (auto) one per CPU on a
    machine of 2 to AUTO_MAX_CPUS CPUs; 1 (the whole batch) on a GPU, under a strategy with
    replicas or several processes, or for a network with layers that mix the examples of a batch."""
    if gpus or train.workers > 1 or strategy not in ("default", "one_device"):
        return 1
    if train.network not in PER_EXAMPLE_NETWORKS:
        return 1
    if train.batch_parts:
        return train.batch_parts
    return cpus if 2 <= cpus <= AUTO_MAX_CPUS else 1


def single_threaded_ops(parts: int) -> bool:
    """Sets TensorFlow to run each op on one thread and `parts` ops at once; False when its runtime
    has already started with other settings (they cannot change then)."""
    threading = tf.config.threading
    if threading.get_intra_op_parallelism_threads() == 1 and threading.get_inter_op_parallelism_threads() >= parts:
        return True
    try:
        threading.set_intra_op_parallelism_threads(1)
        threading.set_inter_op_parallelism_threads(parts)
    except RuntimeError:
        return False
    return True


def parts_in_this_process(train: TrainConfig, strategy: str) -> int:
    """The parts this process trains a batch in under `strategy` (`distribute.chosen_strategy`), its
    TensorFlow threads set for them (1: the whole batch, threads unchanged). Call it before the
    process's first TensorFlow op."""
    gpus = len(tf.config.list_physical_devices("GPU"))  # lists devices without starting the runtime
    parts = parts_for(train, strategy, gpus, machine.cpu_count())
    if parts > 1 and not single_threaded_ops(parts):
        logger.info(
            "TensorFlow's threads were set before the Trainer started (intra-op %d, inter-op %d): "
            "the batch trains whole, not in %d parts (--batch-parts)",
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
            parts,
        )
        return 1
    return parts


class BatchParts(keras.Model):
    """`network` applied to `parts` consecutive parts of each batch, its outputs concatenated in
    order: the same embeddings as `network` on the whole batch when its layers treat each example
    on its own. Training and inference alike (the validation pass runs in parts too)."""

    def __init__(self, network: keras.Model, parts: int, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.parts = parts
        self.built = True  # its weights are the network's, built already (a backup loads into them)

    def call(self, images, training=None):
        size = tf.shape(images)[0]
        embeddings = []
        for i in range(self.parts):
            start, end = size * i // self.parts, size * (i + 1) // self.parts
            # A part of no example (a batch smaller than the parts) runs on one, its output dropped:
            # oneDNN's convolution fails on an empty batch. (A tf.cond around the split instead
            # kept the parts from running side by side.)
            first = tf.minimum(start, size - 1)
            part = images[first : tf.maximum(end, first + 1)]
            embeddings.append(self.network(part, training=training)[: end - start])
        return tf.concat(embeddings, axis=0)


def network_of(model: keras.Model) -> keras.Model:
    """The network a model trains: the model itself, or the network a BatchParts splits batches for."""
    return model.network if isinstance(model, BatchParts) else model
