"""Class-balanced batches for triplet mining.

Semi-hard and hard triplet mining need positives in every batch: with 10 MNIST classes and
random batches of 32 most anchors have a few positives, but small batches or many classes
leave anchors without any, and the loss then learns nothing from them. ``class_balanced_batches``
builds every batch from ``batch_size // examples_per_class`` distinct classes, drawn at random,
with exactly ``examples_per_class`` examples each (the "P x K" sampling of the batch-hard
triplet literature). It is an option for the Trainer's input pipeline:

    ds = tf.data.TFRecordDataset(...).map(parse)            # (features, label), unbatched
    ds = class_balanced_batches(ds, batch_size=64, examples_per_class=8, seed=0)
    model.fit(ds, steps_per_epoch=...)                      # the result repeats forever

How: one dataset per class (the input's examples of that label, shuffled, repeated and batched by
``examples_per_class``), and ``tf.data.Dataset.choose_from_datasets`` driven by a stream of class
ids in which each group of ``batch_size // examples_per_class`` consecutive ids is a random
sample of distinct classes; each group of per-class blocks is then merged into one batch.
Every batch therefore has exactly ``examples_per_class`` examples of each of its classes.

Notes:
- The input is read once per class (in chunks, keeping that class's examples): fine for MNIST's
  10 classes and files on local disk; for many classes, cache the input first (``dataset.cache()``).
- Classes with fewer examples than ``examples_per_class`` are dropped (they cannot fill a block);
  examples of a class repeat, in a new order each pass (``reshuffle_each_iteration``); no
  example appears twice in a batch.
- ``classes`` lists the class ids to use; by default they are found by one pass over the labels.
- The result is infinite; use ``.take(n)`` or the Trainer's ``steps_per_epoch``.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

__all__ = ["class_balanced_batches", "dataset_classes"]


# Labels are handled a chunk at a time: per-example tf.data ops cost ~20x more.
_CHUNK = 1024


def _chunk_labels(labels):
    """A chunk's labels ([N] or [N, 1]) as int64 [N]; fails on more than one label per example."""
    return tf.reshape(tf.cast(labels, tf.int64), tf.shape(labels)[:1])


def dataset_classes(dataset: tf.data.Dataset, min_count: int = 1) -> list[int]:
    """The sorted class ids of an unbatched ``(features, label)`` dataset with >= min_count examples."""
    labels = dataset.batch(_CHUNK).map(lambda features, labels: _chunk_labels(labels))
    counts: dict[int, int] = {}
    for batch in labels.as_numpy_iterator():
        values, n = np.unique(batch, return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[v] = counts.get(v, 0) + c
    return sorted(v for v, c in counts.items() if c >= min_count)


def class_balanced_batches(
    dataset: tf.data.Dataset,
    batch_size: int,
    examples_per_class: int,
    seed: Optional[int] = None,
    classes: Optional[Iterable[int]] = None,
    shuffle_buffer: int = 1024,
) -> tf.data.Dataset:
    """Infinite batches of ``batch_size // examples_per_class`` classes x ``examples_per_class``.

    Args:
      dataset: unbatched ``(features, label)`` elements; ``features`` any nest of tensors,
        ``label`` an integer scalar (or shape ``[1]``).
      batch_size: examples per batch; a multiple of ``examples_per_class``.
      examples_per_class: ``m``, the examples of each class in a batch (>= 2 for positives).
      seed: makes the class choice and the shuffles reproducible.
      classes: the class ids to draw from (default: every label with at least ``m`` examples).
      shuffle_buffer: shuffle buffer of each class's dataset.
    Returns:
      A dataset of ``(features, label)`` batches of exactly ``batch_size`` examples.
    """
    if examples_per_class < 1 or batch_size % examples_per_class:
        raise ValueError(
            f"batch_size ({batch_size}) must be a positive multiple of examples_per_class ({examples_per_class})"
        )
    classes_per_batch = batch_size // examples_per_class
    if classes is None:
        classes = dataset_classes(dataset, min_count=examples_per_class)
    classes = [int(c) for c in classes]
    if len(classes) < classes_per_batch:
        raise ValueError(
            f"{classes_per_batch} classes per batch requested but only {len(classes)} classes "
            f"have at least {examples_per_class} examples"
        )

    def per_class(i, c):
        def select(features, labels):
            keep = tf.equal(_chunk_labels(labels), c)
            return tf.nest.map_structure(lambda x: tf.boolean_mask(x, keep), (features, labels))

        ds = dataset.batch(_CHUNK).map(select).unbatch()
        ds = ds.shuffle(shuffle_buffer, seed=None if seed is None else seed + 1 + i, reshuffle_each_iteration=True)
        # Blocks within one pass: no example twice in a block (the leftover of a pass is dropped,
        # a different one each pass).
        return ds.batch(examples_per_class, drop_remainder=True).repeat()

    blocks = [per_class(i, c) for i, c in enumerate(classes)]
    num_classes = len(classes)

    def draw(step):
        # classes_per_batch distinct indices, a fresh random sample for every batch.
        key = tf.stack([tf.cast(step, tf.int64), tf.constant(0 if seed is None else seed, tf.int64)])
        scores = tf.random.stateless_uniform([num_classes], seed=key)
        return tf.cast(tf.argsort(scores)[:classes_per_batch], tf.int64)

    if seed is None:
        start = tf.data.Dataset.random().take(1)
        choices = start.flat_map(lambda s: tf.data.Dataset.counter().map(lambda i: draw(i + s)))
    else:
        choices = tf.data.Dataset.counter().map(draw)
    choices = choices.unbatch()
    ds = tf.data.Dataset.choose_from_datasets(blocks, choices)

    def merge(features, labels):
        # [classes_per_batch, m, ...] -> [batch_size, ...]
        def flat(x):
            return tf.reshape(x, tf.concat([[batch_size], tf.shape(x)[2:]], axis=0))

        return tf.nest.map_structure(flat, features), flat(labels)

    ds = ds.batch(classes_per_batch, drop_remainder=True).map(merge, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
