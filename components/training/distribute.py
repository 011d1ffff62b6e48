"""Which tf.distribute strategy trains, how the global batch splits over its replicas, and which
task of a multi-worker cluster this process is.

The cluster comes from TF_CONFIG (set by the local `--workers` launcher, the Kubeflow Training
Operator or Vertex AI), read once by the training entry point and passed in here as a dict.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Optional

import tensorflow as tf

from triplet_tfx.components.config import ConfigError, TrainConfig

logger = logging.getLogger(__name__)


def parse_tf_config(text: Optional[str]) -> Dict[str, Any]:
    """TF_CONFIG's JSON ({} when unset or empty)."""
    return json.loads(text) if text else {}


def cluster_tasks(tf_config: Dict[str, Any]) -> int:
    """Training tasks in the cluster (chief and workers; an evaluator does not train)."""
    cluster = tf_config.get("cluster", {})
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def is_chief(tf_config: Dict[str, Any]) -> bool:
    """The task that exports the model: the `chief`, or worker 0 when the cluster has none
    (the Training Operator's Worker-only TFJobs); a process without a cluster."""
    task = tf_config.get("task", {})
    if not task:
        return True
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and not tf_config.get("cluster", {}).get("chief")


def choose_strategy(requested: str, tasks: int, gpus: int) -> str:
    """What `--strategy` means on this machine: `multi_worker`, `mirrored`, `one_device` or
    `default` (TensorFlow's default strategy: no replica machinery at all)."""
    if requested != "auto":
        return requested
    if tasks > 1:
        return "multi_worker"
    if gpus > 1:
        return "mirrored"
    return "default"


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """tf.distribute's, for Keras 3.12's fit(), which calls `reduce` in two ways this strategy refuses
    with more than one worker (one worker or MirroredStrategy accept them): on a whole
    (images, labels) batch before training, and with axis=0 on the scalar losses it logs."""

    def reduce(self, reduce_op, value, axis):
        if isinstance(value, (tuple, list, dict)):
            return tf.nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)
        if axis is not None and all(t.shape.rank == 0 for t in self.experimental_local_results(value)):
            axis = None
        return super().reduce(reduce_op, value, axis)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy object. multi_worker must come before any other TensorFlow operation of the
    process (it configures the collective ops)."""
    if name == "multi_worker":
        return MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0")
    return tf.distribute.get_strategy()


def chosen_strategy(train: TrainConfig, tf_config: Dict[str, Any]) -> str:
    """`choose_strategy` for this process: its cluster (TF_CONFIG, {}: none) and its GPUs (listed
    without starting TensorFlow's runtime)."""
    return choose_strategy(train.strategy, cluster_tasks(tf_config), len(tf.config.list_physical_devices("GPU")))


def replica_batch_size(train: TrainConfig, replicas: int) -> int:
    """The per-replica share of the global batch. With class-balanced batches (P classes x m,
    class-contiguous) every replica's contiguous share must hold whole classes, so that each anchor
    has its positives on its own replica (the `replica` mining) and the global batch keeps P classes."""
    if train.batch_size % replicas:
        raise ConfigError(
            f"train.batch_size (--batch-size): the global batch {train.batch_size} does not divide "
            f"evenly over {replicas} replicas"
        )
    if train.examples_per_class:
        classes = train.batch_size // train.examples_per_class
        if classes % replicas:
            raise ConfigError(
                f"train.examples_per_class (--examples-per-class) / train.batch_size (--batch-size): a batch of "
                f"{classes} classes x {train.examples_per_class} does not split into whole classes over {replicas} "
                f"replicas; make batch_size / examples_per_class a multiple of {replicas}"
            )
    return train.batch_size // replicas


def uses_global_mining(train: TrainConfig, replicas: int) -> bool:
    return train.mining == "global" and replicas > 1


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    return type(strategy).__name__.lstrip("_")


def log_strategy(strategy: tf.distribute.Strategy, train: TrainConfig) -> int:
    """Checks the batch split and logs "Strategy: ..."; returns the per-replica batch."""
    replicas = strategy.num_replicas_in_sync
    per_replica = replica_batch_size(train, replicas)
    mining = (
        ("global batch" if uses_global_mining(train, replicas) else "each replica's batch")
        if replicas > 1
        else "the batch"
    )
    logger.info(
        "Strategy: %s, %d replica(s), per-replica batch %d (global %d); mining over %s",
        strategy_name(strategy),
        replicas,
        per_replica,
        train.batch_size,
        mining,
    )
    return per_replica
