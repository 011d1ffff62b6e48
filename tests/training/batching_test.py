"""Tests of components/batching.py: class-balanced batches."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.training.batching import class_balanced_batches, dataset_classes


def _dataset(n=300, num_classes=7, seed=0, label_shape=()):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    images = rng.normal(size=(n, 4, 4)).astype(np.float32)
    # Tag every example with its label so that the test can check features follow labels.
    images[:, 0, 0] = labels
    features = {"image": images, "index": np.arange(n)}
    return tf.data.Dataset.from_tensor_slices((features, labels.reshape((n,) + label_shape))), labels


@pytest.mark.parametrize("batch_size,m", [(12, 4), (14, 2), (21, 3), (5, 1)])
def test_every_batch_has_m_examples_of_each_class(batch_size, m):
    ds, _ = _dataset()
    batches = class_balanced_batches(ds, batch_size=batch_size, examples_per_class=m, seed=1)
    for features, labels in batches.take(25).as_numpy_iterator():
        assert labels.shape == (batch_size,)
        assert features["image"].shape == (batch_size, 4, 4)
        counts = collections.Counter(labels.tolist())
        assert len(counts) == batch_size // m
        assert set(counts.values()) == {m}
        np.testing.assert_array_equal(features["image"][:, 0, 0], labels)
        # No example twice in a batch.
        assert len(set(features["index"].tolist())) == batch_size


def test_classes_are_mixed_and_all_used():
    ds, _ = _dataset()
    seen = collections.Counter()
    for _, labels in class_balanced_batches(ds, 8, 4, seed=3).take(60).as_numpy_iterator():
        seen.update(set(labels.tolist()))
    assert set(seen) == set(range(7))


def test_seed_reproducible_and_column_labels():
    ds, _ = _dataset(label_shape=(1,))
    a = [labels for _, labels in class_balanced_batches(ds, 8, 2, seed=5).take(5).as_numpy_iterator()]
    b = [labels for _, labels in class_balanced_batches(ds, 8, 2, seed=5).take(5).as_numpy_iterator()]
    assert a[0].shape == (8, 1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # Without a seed it still works.
    _, labels = next(iter(class_balanced_batches(ds, 8, 2).take(1)))
    assert sorted(collections.Counter(labels.numpy().ravel().tolist()).values()) == [2, 2, 2, 2]


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
