"""The inputs of the losses: flat labels and float32-or-wider embeddings, and the global batch
all-gathered over the replicas of a ``tf.distribute`` strategy (see the package docstring for
the loss-scaling convention)."""

from __future__ import annotations

import tensorflow as tf


def prepare(labels, embeddings):
    """Flat labels, float32-or-wider embeddings, and the dtype to cast the loss back to."""
    embeddings = tf.convert_to_tensor(embeddings)
    out_dtype = embeddings.dtype
    if embeddings.dtype in (tf.float16, tf.bfloat16):
        embeddings = tf.cast(embeddings, tf.float32)
    elif not embeddings.dtype.is_floating:
        embeddings = tf.cast(embeddings, tf.float32)
        out_dtype = tf.float32
    labels = tf.convert_to_tensor(labels)
    labels = tf.reshape(labels, [-1])
    return labels, embeddings, out_dtype


def gather_global_batch(labels, embeddings):
    """All-gathers ``labels`` and ``embeddings`` over the replicas of the current strategy.

    Inside a replica context with more than one replica in sync, returns the concatenation (in
    replica order) of every replica's batch; the gradient of the gathered embeddings flows back
    to each replica's own embeddings (summed over replicas, see the package docstring for the
    loss-scaling convention). Elsewhere returns the inputs unchanged.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return labels, embeddings
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    return ctx.all_gather(labels, axis=0), ctx.all_gather(embeddings, axis=0)
