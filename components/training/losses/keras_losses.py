"""``keras.losses.Loss`` classes of the triplet losses, registered as serializable under the
package ``triplet_tfx`` so that saved ``.keras`` models reload; under a strategy with several
replicas they divide the loss by ``num_replicas_in_sync`` (see the package docstring)."""

from __future__ import annotations

import keras
import tensorflow as tf

from triplet_tfx.components.training.losses.hard import triplet_hard_loss
from triplet_tfx.components.training.losses.semihard import triplet_semihard_loss


def _serialize_metric(distance_metric):
    if isinstance(distance_metric, str):
        return distance_metric
    return keras.saving.serialize_keras_object(distance_metric)


def _deserialize_metric(distance_metric):
    if isinstance(distance_metric, str):
        return distance_metric
    return keras.saving.deserialize_keras_object(distance_metric)


def _scale_for_distribution(loss):
    """Divides by the replicas in sync under a strategy, as Keras does for its own losses.

    Keras 3 scales a loss by ``1 / num_replicas_in_sync`` in its reduction step, which it skips
    for a scalar loss; these losses are scalars over the batch, so they scale themselves.
    """
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if num_replicas > 1:
        loss = loss * tf.cast(1.0 / num_replicas, loss.dtype)
    return loss


class _TripletLossBase(keras.losses.Loss):
    def __init__(self, margin=1.0, distance_metric="L2", global_batch=False, name=None, **kwargs):
        # The loss is a scalar over the whole batch: no per-sample reduction.
        kwargs.setdefault("reduction", "sum_over_batch_size")
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.distance_metric = distance_metric
        self.global_batch = bool(global_batch)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "margin": self.margin,
                "distance_metric": _serialize_metric(self.distance_metric),
                "global_batch": self.global_batch,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "distance_metric" in config:
            config["distance_metric"] = _deserialize_metric(config["distance_metric"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="triplet_tfx")
class TripletSemiHardLoss(_TripletLossBase):
    """Keras 3 semi-hard triplet loss; ``y_true``: integer labels, ``y_pred``: embeddings."""

    def __init__(self, margin=1.0, distance_metric="L2", global_batch=False, name="triplet_semihard_loss", **kwargs):
        super().__init__(margin=margin, distance_metric=distance_metric, global_batch=global_batch, name=name, **kwargs)

    def call(self, y_true, y_pred):
        return _scale_for_distribution(
            triplet_semihard_loss(
                tf.cast(y_true, tf.int64),
                y_pred,
                margin=self.margin,
                distance_metric=self.distance_metric,
                global_batch=self.global_batch,
            )
        )


@keras.saving.register_keras_serializable(package="triplet_tfx")
class TripletHardLoss(_TripletLossBase):
    """Keras 3 batch-hard triplet loss; ``y_true``: integer labels, ``y_pred``: embeddings."""

    def __init__(
        self, margin=1.0, soft=False, distance_metric="L2", global_batch=False, name="triplet_hard_loss", **kwargs
    ):
        super().__init__(margin=margin, distance_metric=distance_metric, global_batch=global_batch, name=name, **kwargs)
        self.soft = bool(soft)

    def get_config(self):
        config = super().get_config()
        config["soft"] = self.soft
        return config

    def call(self, y_true, y_pred):
        return _scale_for_distribution(
            triplet_hard_loss(
                tf.cast(y_true, tf.int64),
                y_pred,
                margin=self.margin,
                soft=self.soft,
                distance_metric=self.distance_metric,
                global_batch=self.global_batch,
            )
        )
