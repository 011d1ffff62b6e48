"""TFA's batch-hard triplet loss (and its soft variant), see the package docstring."""

from __future__ import annotations

import tensorflow as tf

from triplet_tfx.components.training.losses.distances import DistanceMetric, distance_matrix
from triplet_tfx.components.training.losses.inputs import gather_global_batch, prepare
from triplet_tfx.components.training.losses.mining import masked_maximum, masked_minimum


def triplet_hard_loss(
    labels,
    embeddings,
    margin: float = 1.0,
    soft: bool = False,
    distance_metric: DistanceMetric = "L2",
    global_batch: bool = False,
) -> tf.Tensor:
    """TFA's ``triplet_hard_loss`` (batch-hard), O(B^2) like TFA; see the package docstring.

    Args as :func:`triplet_semihard_loss`; ``soft`` replaces the hinge by a stable
    ``softplus(hardest_pos - hardest_neg)`` (the margin is then unused, as in TFA).
    """
    labels, embeddings, out_dtype = prepare(labels, embeddings)
    if global_batch:
        labels, embeddings = gather_global_batch(labels, embeddings)
    pdist = distance_matrix(embeddings, distance_metric)
    dtype = pdist.dtype
    n = tf.shape(pdist)[0]
    adjacency = tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :])
    adjacency_not = tf.cast(tf.logical_not(adjacency), dtype)
    mask_positives = tf.cast(adjacency, dtype) - tf.linalg.diag(tf.ones([n], dtype))

    hard_negatives = masked_minimum(pdist, adjacency_not)
    hard_positives = masked_maximum(pdist, mask_positives)
    diff = hard_positives - hard_negatives
    if soft:
        per_anchor = tf.math.softplus(diff)
    else:
        per_anchor = tf.maximum(diff + tf.cast(margin, dtype), 0.0)
    loss = tf.reduce_mean(per_anchor)
    # Degenerate batch (no anchor-positive pair, or a single class): 0 with a zero gradient.
    degenerate = tf.logical_or(
        tf.equal(tf.reduce_sum(mask_positives), 0.0), tf.equal(tf.reduce_sum(adjacency_not), 0.0)
    )
    loss = tf.where(degenerate, tf.zeros_like(loss), loss)
    return tf.cast(loss, out_dtype)
