"""Batches for triplet mining: class-balanced, or shuffled batches of a split held in memory.

Semi-hard and hard triplet mining need positives in every batch: with 10 MNIST classes and
random batches of 32 most anchors have a few positives, but small batches or many classes
leave anchors without any, and the loss then learns nothing from them. Class-balanced batches
are built from ``batch_size // examples_per_class`` distinct classes, drawn at random, with
exactly ``examples_per_class`` examples each (the "P x K" sampling of the batch-hard triplet
literature). Two forms draw them the same way, for the two ways the Trainer holds a split:

- in memory (``class_balanced_indices`` + ``gathered_batches``): the split is one cached element
  of all its examples; batches are index vectors into it, gathered. Per batch, that costs a
  gather: the way to go whenever the split fits in memory.

      whole = batched_examples.rebatch(num_examples).cache()          # one (features, labels) element
      indices = class_balanced_indices(labels, batch_size=64, examples_per_class=8, seed=0)
      model.fit(gathered_batches(whole, indices).prefetch(tf.data.AUTOTUNE), steps_per_epoch=...)

- streamed (``class_balanced_batches``): for splits over the memory budget; every class's examples
  are selected from the input, which is read once per class and pass, and examples travel through
  tf.data one by one (~15x the in-memory form's cost per batch).

      ds = tf.data.TFRecordDataset(...).map(parse)            # (features, label), unbatched
      model.fit(class_balanced_batches(ds, 64, 8, seed=0).prefetch(tf.data.AUTOTUNE), steps_per_epoch=...)

How: one stream of blocks per class (``examples_per_class`` of its examples, in a new random order
every pass over the class, the leftover of a pass dropped), and ``tf.data.Dataset.choose_from_datasets``
driven by a stream of class ids in which each group of ``batch_size // examples_per_class``
consecutive ids is a random sample of distinct classes; each group of blocks becomes one batch.
Every batch therefore has exactly ``examples_per_class`` examples of each of its classes, and no
example twice.

Notes:
- Classes with fewer examples than ``examples_per_class`` are dropped (they cannot fill a block).
- ``classes`` lists the class ids to use; by default every label with enough examples.
- A seed makes the stream reproducible: the same seed gives the same batches, and ``.skip(n)``
  gives the batches after the first n (the Trainer's resume).
- The result is infinite; use ``.take(n)`` or the Trainer's ``steps_per_epoch``.
- The caller prefetches (after its own maps, such as augmentation), as in the examples above.

Plain shuffled batches of a split in memory are index vectors too (``shuffled_indices``): a new
uniform random order every pass, gathered like class-balanced batches. Unlike a shuffle buffer,
this holds no second copy of the examples, shuffles the whole split whatever its size, and yields
the first batch without first filling a buffer.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

__all__ = [
    "class_balanced_batches",
    "class_balanced_indices",
    "dataset_classes",
    "gathered_batches",
    "shuffled_indices",
]


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


def _checked_classes(
    batch_size: int, examples_per_class: int, classes: Iterable[int], seed: Optional[int]
) -> tuple[List[int], int, int]:
    """(classes, classes per batch, seed): validated, with a random seed where none was given."""
    if examples_per_class < 1 or batch_size % examples_per_class:
        raise ValueError(
            f"batch_size ({batch_size}) must be a positive multiple of examples_per_class ({examples_per_class})"
        )
    classes = [int(c) for c in classes]
    classes_per_batch = batch_size // examples_per_class
    if len(classes) < classes_per_batch:
        raise ValueError(
            f"{classes_per_batch} classes per batch requested but only {len(classes)} classes "
            f"have at least {examples_per_class} examples"
        )
    return classes, classes_per_batch, int(np.random.default_rng().integers(2**31)) if seed is None else seed


def _balanced_stream(class_blocks: List[tf.data.Dataset], classes_per_batch: int, seed: int) -> tf.data.Dataset:
    """Groups of `classes_per_batch` blocks of distinct classes, drawn at random: [classes_per_batch, m, ...]."""
    num_classes = len(class_blocks)

    def draw(step):
        # classes_per_batch distinct indices, a fresh random sample for every batch.
        scores = tf.random.stateless_uniform([num_classes], seed=_stateless_key(step, seed))
        return tf.cast(tf.argsort(scores)[:classes_per_batch], tf.int64)

    choices = tf.data.Dataset.counter().map(draw).unbatch()
    return tf.data.Dataset.choose_from_datasets(class_blocks, choices).batch(classes_per_batch, drop_remainder=True)


def _stateless_key(counter, seed: int) -> tf.Tensor:
    """The stateless random seed of draw number `counter` (a batch, a pass) of a seeded stream."""
    return tf.stack([tf.cast(counter, tf.int64), tf.constant(seed, tf.int64)])


def _pass_key(seed: int, class_index: int, pass_number) -> tf.Tensor:
    """The stateless seed of one pass over one class's examples."""
    return tf.random.experimental.stateless_fold_in(_stateless_key(pass_number, seed), class_index + 1)


def class_balanced_indices(
    labels: np.ndarray,
    batch_size: int,
    examples_per_class: int,
    seed: Optional[int] = None,
    classes: Optional[Iterable[int]] = None,
) -> tf.data.Dataset:
    """Infinite int64 ``[batch_size]`` vectors of positions in ``labels`` ([N] or [N, 1] integer
    class ids), each a class-balanced batch: ``batch_size // examples_per_class`` classes x
    ``examples_per_class`` (see the module docstring)."""
    labels = np.asarray(labels).reshape(len(labels))
    if classes is None:
        values, counts = np.unique(labels, return_counts=True)
        classes = values[counts >= examples_per_class].tolist()
    classes, classes_per_batch, seed = _checked_classes(batch_size, examples_per_class, classes, seed)
    m = examples_per_class

    def class_blocks(i: int, c: int) -> tf.data.Dataset:
        members = np.flatnonzero(labels == c).astype(np.int64)
        if len(members) < m:
            raise ValueError(f"class {c} has {len(members)} examples, fewer than examples_per_class ({m})")
        blocks_per_pass = len(members) // m

        def one_pass(pass_number):
            order = tf.argsort(tf.random.stateless_uniform([len(members)], seed=_pass_key(seed, i, pass_number)))
            return tf.reshape(tf.gather(members, order[: blocks_per_pass * m]), [blocks_per_pass, m])

        return tf.data.Dataset.counter().map(one_pass).unbatch()

    blocks = [class_blocks(i, c) for i, c in enumerate(classes)]
    return _balanced_stream(blocks, classes_per_batch, seed).map(lambda group: tf.reshape(group, [batch_size]))


def shuffled_indices(size: int, batch_size: int, seed: int) -> tf.data.Dataset:
    """Infinite int64 vectors of positions in a split of ``size`` examples: each pass over the split a
    new random order (seeded per pass), cut into batches of ``batch_size``, the pass's last batch
    short unless ``batch_size`` divides ``size`` (the vectors' static length is then ``batch_size``)."""
    if size < 1 or batch_size < 1:
        raise ValueError(f"no batches of {batch_size} from {size} examples")
    full, rest = divmod(size, batch_size)

    def one_pass(pass_number):
        order = tf.argsort(tf.random.stateless_uniform([size], seed=_stateless_key(pass_number, seed)))
        order = tf.cast(order, tf.int64)
        batches = tf.data.Dataset.from_tensor_slices(tf.reshape(order[: full * batch_size], [full, batch_size]))
        if rest:
            batches = batches.concatenate(tf.data.Dataset.from_tensors(order[full * batch_size :]))
        return batches

    return tf.data.Dataset.counter().flat_map(one_pass)


def gathered_batches(whole: tf.data.Dataset, indices: tf.data.Dataset) -> tf.data.Dataset:
    """The batches of ``whole`` (a dataset of one element: a nest of tensors of all examples, best
    cached) at each vector of ``indices``."""
    return tf.data.Dataset.zip(indices, whole.repeat()).map(
        lambda index, examples: tf.nest.map_structure(lambda x: tf.gather(x, index), examples),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def class_balanced_batches(
    dataset: tf.data.Dataset,
    batch_size: int,
    examples_per_class: int,
    seed: Optional[int] = None,
    classes: Optional[Iterable[int]] = None,
    shuffle_buffer: int = 1024,
) -> tf.data.Dataset:
    """Infinite batches of ``batch_size // examples_per_class`` classes x ``examples_per_class``,
    streamed from ``dataset`` (see the module docstring).

    Args:
      dataset: unbatched ``(features, label)`` elements; ``features`` any nest of tensors,
        ``label`` an integer scalar (or shape ``[1]``).
      batch_size: examples per batch; a multiple of ``examples_per_class``.
      examples_per_class: ``m``, the examples of each class in a batch (>= 2 for positives).
      seed: makes the class choice and the shuffles reproducible.
      classes: the class ids to draw from (default: every label with at least ``m`` examples).
      shuffle_buffer: shuffle buffer of each class's examples.
    Returns:
      A dataset of ``(features, label)`` batches of exactly ``batch_size`` examples.
    """
    if classes is None:
        classes = dataset_classes(dataset, min_count=examples_per_class)
    classes, classes_per_batch, seed = _checked_classes(batch_size, examples_per_class, classes, seed)

    def class_blocks(i, c):
        def select(features, labels):
            keep = tf.equal(_chunk_labels(labels), c)
            return tf.nest.map_structure(lambda x: tf.boolean_mask(x, keep), (features, labels))

        ds = dataset.batch(_CHUNK).map(select).unbatch()
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1 + i, reshuffle_each_iteration=True)
        return ds.batch(examples_per_class, drop_remainder=True).repeat()

    blocks = [class_blocks(i, c) for i, c in enumerate(classes)]

    def merge(features, labels):
        # [classes_per_batch, m, ...] -> [batch_size, ...]
        def flat(x):
            return tf.reshape(x, tf.concat([[batch_size], tf.shape(x)[2:]], axis=0))

        return tf.nest.map_structure(flat, features), flat(labels)

    return _balanced_stream(blocks, classes_per_batch, seed).map(merge, num_parallel_calls=tf.data.AUTOTUNE)
