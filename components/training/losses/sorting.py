"""Sorted rows of the distance matrix, for the semi-hard mining.

Each anchor's row is sorted once, as int64 keys that pack the distance (32 order-preserving
bits), a same-label flag and the column, so that at equal distance negatives come first; the
sorted layout gives back, in sorted order, the columns, the distances, the negative flags and
the ids of the groups of tied negatives. On CPU outside XLA, TensorFlow's sort is 5-10x slower
than NumPy's, so there the rows are sorted with NumPy (``tf.numpy_function``); ``SORT_IMPL``
overrides the choice (tests and benchmarks set it) and is read at call time.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as _tf_ops
from tensorflow.python.ops import control_flow_util as _cf_util

# Column bits in the packed sort keys: batches up to 2**20 examples.
_COL_BITS = 20


def _sortable_int32(values):
    """Order-preserving map float32 -> int32 (for non-NaN values; -0.0 must be normalised)."""
    bits = tf.bitcast(values, tf.int32)
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.constant(0x7FFFFFFF, tf.int32)), bits)


def _float_from_sortable(keys):
    bits = tf.where(keys < 0, tf.bitwise.bitwise_xor(keys, tf.constant(0x7FFFFFFF, tf.int32)), keys)
    return tf.bitcast(bits, tf.float32)


# How rows are sorted: "auto" (NumPy on CPU outside XLA, else tf.sort), "tf" or "numpy".
# TensorFlow's CPU sort (TopKV2 with k = n, an indirect std::sort) is ~5-10x slower than NumPy's
# vectorised sort, and the sort dominates the semi-hard mining. Under XLA (Keras 3 compiles the
# train step with XLA by default) or with a GPU present, tf.sort is used.
SORT_IMPL = "auto"


def use_numpy_sort() -> bool:
    if SORT_IMPL == "numpy":
        return True
    if SORT_IMPL == "tf":
        return False
    if not tf.executing_eagerly() and _cf_util.GraphOrParentsInXlaContext(_tf_ops.get_default_graph()):
        return False
    return not tf.config.list_logical_devices("GPU")


def _np_sorted_layout(keys, row_max):
    """NumPy version of _tf_sorted_layout (same outputs, bit for bit)."""
    keys = np.sort(keys, axis=1)
    s_col = (keys & (2**_COL_BITS - 1)).astype(np.int32)
    s_neg = (keys & (2**_COL_BITS)) == 0
    k32 = (keys >> (_COL_BITS + 1)).astype(np.int32)
    s_val = np.where(k32 < 0, k32 ^ np.int32(0x7FFFFFFF), k32).view(np.float32)
    new_group = s_neg.copy()
    shifted = s_val - row_max  # float32, as TFA's _masked_minimum compares them
    new_group[:, 1:] &= ~(s_neg[:, :-1] & (shifted[:, 1:] == shifted[:, :-1]))
    gid = np.cumsum(new_group, axis=1, dtype=np.int32)
    return s_col, s_val, s_neg, gid


def _tf_sorted_layout(keys, row_max):
    """Sorts the packed keys of each row; returns, in sorted order, the columns, distances,
    negative flags and the ids (1, 2, ...) of the groups of tied negatives (for a non-negative
    entry: the number of negative groups before it, i.e. at a distance <= its own)."""
    sorted_keys = tf.sort(keys, axis=1)
    s_col = tf.cast(tf.bitwise.bitwise_and(sorted_keys, 2**_COL_BITS - 1), tf.int32)
    s_neg = tf.equal(tf.bitwise.bitwise_and(sorted_keys, 2**_COL_BITS), 0)
    s_val = _float_from_sortable(tf.cast(tf.bitwise.right_shift(sorted_keys, _COL_BITS + 1), tf.int32))
    # Tied negatives: consecutive negatives whose distances are equal once shifted by the row
    # maximum (TFA's _masked_minimum compares d - row_max, where rounding can merge distances
    # 1 ulp apart). Negatives sort first at equal distance, so exact ties are contiguous.
    shifted = s_val - row_max
    prev_neg = _shift_right(s_neg, False)
    prev_shifted = _shift_right(shifted, 0.0)
    new_group = tf.logical_and(s_neg, tf.logical_not(tf.logical_and(prev_neg, tf.equal(prev_shifted, shifted))))
    gid = tf.cumsum(tf.cast(new_group, tf.int32), axis=1)
    return s_col, s_val, s_neg, gid


def sorted_layout(keys, row_max, use_numpy):
    if use_numpy:
        outs = tf.numpy_function(
            _np_sorted_layout,
            [keys, row_max],
            [tf.int32, tf.float32, tf.bool, tf.int32],
            stateful=False,
        )
        return [tf.ensure_shape(o, keys.shape) for o in outs]
    return _tf_sorted_layout(keys, row_max)


def _shift_right(x, fill):
    """x[:, j-1] at column j, ``fill`` at column 0."""
    first = tf.fill([tf.shape(x)[0], 1], tf.constant(fill, dtype=x.dtype))
    return tf.concat([first, x[:, :-1]], axis=1)


def semihard_keys(pdist, same):
    """Packed sort keys: [distance (32 bits, order preserving)] [same-label flag] [column]."""
    n64 = tf.cast(tf.shape(pdist)[1], tf.int64)  # columns
    # Normalise -0.0 to +0.0 so that equal distances get equal keys.
    d = tf.where(tf.equal(pdist, 0.0), tf.zeros_like(pdist), pdist)
    key32 = tf.cast(_sortable_int32(d), tf.int64)
    cols = tf.range(n64, dtype=tf.int64)[tf.newaxis, :]
    # Sorting ascending puts, at equal distance, negatives before same-label entries.
    return key32 * (2 ** (_COL_BITS + 1)) + tf.cast(same, tf.int64) * (2**_COL_BITS) + cols
