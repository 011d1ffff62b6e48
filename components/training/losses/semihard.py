"""TFA's semi-hard triplet loss in O(B^2) memory (see the package docstring for the semantics)."""

from __future__ import annotations

import tensorflow as tf

from triplet_tfx.components.training.losses.distances import DistanceMetric, distance_matrix
from triplet_tfx.components.training.losses.inputs import gather_global_batch, prepare
from triplet_tfx.components.training.losses.mining import semihard_value_and_weights


def _apply_weights(value, weights, pdist):
    """A scalar with the value ``value`` and the gradient ``weights`` with respect to ``pdist``."""
    surrogate = tf.reduce_sum(weights * pdist)
    return tf.stop_gradient(value) + (surrogate - tf.stop_gradient(surrogate))


def triplet_semihard_loss(
    labels,
    embeddings,
    margin: float = 1.0,
    distance_metric: DistanceMetric = "L2",
    global_batch: bool = False,
) -> tf.Tensor:
    """TFA's ``triplet_semihard_loss`` in O(B^2) memory (see the package docstring).

    Args:
      labels: integer labels, shape ``[B]`` or ``[B, 1]`` (int32 or int64).
      embeddings: ``[B, D]`` float embeddings (not normalised by this function).
      margin: the margin of the triplet hinge.
      distance_metric: ``"L2"``, ``"squared-L2"``, ``"angular"`` or a callable returning
        the ``[B, B]`` distance matrix.
      global_batch: mine over the batch all-gathered from every replica (see the package docstring).
    Returns:
      The scalar loss, in the embeddings' dtype.
    """
    labels, embeddings, out_dtype = prepare(labels, embeddings)
    if global_batch:
        labels, embeddings = gather_global_batch(labels, embeddings)
    pdist = distance_matrix(embeddings, distance_metric)
    compute_dtype = pdist.dtype
    pdist32 = tf.cast(pdist, tf.float32)
    adjacency = tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :])
    value, weights = semihard_value_and_weights(tf.stop_gradient(pdist32), adjacency, tf.cast(margin, tf.float32))
    loss = _apply_weights(tf.cast(value, compute_dtype), tf.cast(weights, compute_dtype), pdist)
    return tf.cast(loss, out_dtype)
