"""Tests of components/batching.py: class-balanced batches, shuffled batches of a split in memory."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.training.batching import (
    class_balanced_batches,
    class_balanced_indices,
    dataset_classes,
    gathered_batches,
    shuffled_indices,
)


def _examples(n=300, num_classes=7, seed=0, label_shape=()):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    images = rng.normal(size=(n, 4, 4)).astype(np.float32)
    # Tag every example with its label so that the test can check features follow labels.
    images[:, 0, 0] = labels
    features = {"image": images, "index": np.arange(n)}
    return features, labels.reshape((n,) + label_shape)


def _dataset(**kwargs):
    features, labels = _examples(**kwargs)
    return tf.data.Dataset.from_tensor_slices((features, labels)), labels


def _in_memory(batch_size, m, seed=None, **kwargs):
    """Class-balanced batches gathered from one element holding the whole split."""
    features, labels = _examples(**kwargs)
    whole = tf.data.Dataset.from_tensors((features, labels))
    return gathered_batches(whole, class_balanced_indices(labels, batch_size, m, seed=seed))


def _streamed(batch_size, m, seed=None, **kwargs):
    return class_balanced_batches(_dataset(**kwargs)[0], batch_size, m, seed=seed)


FORMS = pytest.mark.parametrize("batches_of", [_in_memory, _streamed], ids=["in_memory", "streamed"])


@FORMS
@pytest.mark.parametrize("batch_size,m", [(12, 4), (14, 2), (21, 3), (5, 1)])
def test_every_batch_has_m_examples_of_each_class(batches_of, batch_size, m):
    batches = batches_of(batch_size, m, seed=1)
    for features, labels in batches.take(25).as_numpy_iterator():
        assert labels.shape == (batch_size,)
        assert features["image"].shape == (batch_size, 4, 4)
        counts = collections.Counter(labels.tolist())
        assert len(counts) == batch_size // m
        assert set(counts.values()) == {m}
        np.testing.assert_array_equal(features["image"][:, 0, 0], labels)
        # No example twice in a batch.
        assert len(set(features["index"].tolist())) == batch_size


@FORMS
def test_classes_are_mixed_and_all_used(batches_of):
    seen = collections.Counter()
    for _, labels in batches_of(8, 4, seed=3).take(60).as_numpy_iterator():
        seen.update(set(labels.tolist()))
    assert set(seen) == set(range(7))


@FORMS
def test_seed_reproducible_resumable_and_column_labels(batches_of):
    def labels_of(batches, n=6):
        return [labels for _, labels in batches.take(n).as_numpy_iterator()]

    a = labels_of(batches_of(8, 2, seed=5, label_shape=(1,)))
    b = labels_of(batches_of(8, 2, seed=5, label_shape=(1,)))
    assert a[0].shape == (8, 1)
    np.testing.assert_array_equal(a, b)
    # A resumed run skips the batches it has seen and gets the ones that followed them.
    np.testing.assert_array_equal(labels_of(batches_of(8, 2, seed=5, label_shape=(1,)).skip(2), 4), a[2:])
    assert not np.array_equal(labels_of(batches_of(8, 2, seed=6, label_shape=(1,))), a)
    # Without a seed it still works.
    _, labels = next(iter(batches_of(8, 2, label_shape=(1,)).take(1)))
    assert sorted(collections.Counter(labels.numpy().ravel().tolist()).values()) == [2, 2, 2, 2]


def test_in_memory_blocks_take_every_example_of_a_class_once_per_pass():
    labels = np.repeat(np.arange(4), [9, 12, 8, 30])
    m, passes = 4, 3
    seen = collections.defaultdict(list)  # class -> its blocks, in order
    for batch in class_balanced_indices(labels, 8, m, seed=2).take(120).as_numpy_iterator():
        for block in batch.reshape(-1, m):
            assert len(set(labels[block].tolist())) == 1
            seen[int(labels[block[0]])].append(block)
    for c, blocks in seen.items():
        members = np.flatnonzero(labels == c)
        per_pass = len(members) // m
        assert len(blocks) >= passes * per_pass, c
        orders = [np.concatenate(blocks[p * per_pass : (p + 1) * per_pass]) for p in range(passes)]
        for order in orders:
            # A pass: distinct examples of the class, all of them but the leftover (< m).
            assert len(set(order.tolist())) == per_pass * m and set(order.tolist()) <= set(members.tolist())
        assert len({tuple(order.tolist()) for order in orders}) == passes  # a new order each pass


def test_rare_classes_dropped_and_errors():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 1, np.int64)
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((21, 2), np.float32), labels))
    assert dataset_classes(ds) == [0, 1, 2]
    assert dataset_classes(ds, min_count=2) == [0, 1]
    for _, batch_labels in class_balanced_batches(ds, 4, 2, seed=0).take(5).as_numpy_iterator():
        assert set(batch_labels.tolist()) == {0, 1}
    with pytest.raises(ValueError):
        class_balanced_batches(ds, 6, 2)  # 3 classes per batch, only 2 usable
    with pytest.raises(ValueError):
        class_balanced_batches(ds, 5, 2)  # not a multiple
    for batch in class_balanced_indices(labels, 4, 2, seed=0).take(5).as_numpy_iterator():
        assert set(labels[batch].tolist()) == {0, 1}
    with pytest.raises(ValueError, match="3 classes per batch"):
        class_balanced_indices(labels, 6, 2)
    with pytest.raises(ValueError, match="class 2 has 1 examples"):
        class_balanced_indices(labels, 4, 2, classes=[0, 2])


@pytest.mark.parametrize("size,batch_size", [(12, 4), (10, 4), (3, 4)])
def test_shuffled_indices_take_every_example_once_per_pass_in_a_new_order(size, batch_size):
    per_pass = -(-size // batch_size)
    indices = shuffled_indices(size, batch_size, seed=3)
    assert indices.element_spec.shape[0] == (batch_size if size % batch_size == 0 else None)
    batches = list(indices.take(4 * per_pass).as_numpy_iterator())
    last = size - (per_pass - 1) * batch_size
    assert [len(b) for b in batches] == ([batch_size] * (per_pass - 1) + [last]) * 4
    orders = [np.concatenate(batches[p * per_pass : (p + 1) * per_pass]) for p in range(4)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(size))
    assert len({tuple(order.tolist()) for order in orders}) > 1  # reshuffled between passes
    # Seeded (the Trainer's resume skips the batches it has trained on) and a different seed differs.
    again = list(shuffled_indices(size, batch_size, seed=3).skip(per_pass + 1).take(2).as_numpy_iterator())
    assert all(np.array_equal(a, b) for a, b in zip(again, batches[per_pass + 1 :]))
    other = np.concatenate(list(shuffled_indices(size, batch_size, seed=4).take(4 * per_pass).as_numpy_iterator()))
    assert not np.array_equal(other, np.concatenate(orders))
    with pytest.raises(ValueError, match="no batches of 4 from 0 examples"):
        shuffled_indices(0, 4, seed=3)


def test_shuffled_batches_gather_the_examples_of_their_indices():
    features, labels = _examples(n=50)
    whole = tf.data.Dataset.from_tensors((features, labels))
    seen = []
    for batch_features, batch_labels in gathered_batches(whole, shuffled_indices(50, 16, seed=0)).take(4):
        index = batch_features["index"].numpy()
        np.testing.assert_array_equal(batch_labels.numpy(), labels[index])
        np.testing.assert_array_equal(batch_features["image"].numpy(), features["image"][index])
        seen += index.tolist()
    assert sorted(seen) == list(range(50))
