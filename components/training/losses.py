"""Triplet losses for Keras 3: drop-in replacements for TensorFlow Addons' triplet losses.

TensorFlow Addons (TFA) is end-of-life and cannot be imported next to Keras 3, but models of
this project were trained with ``tfa.losses.TripletSemiHardLoss``. This module computes the same
losses, with the same numbers and the same gradients as TFA 0.23.0 (checked against golden
values recorded with TFA in ``shared/golden``), in O(B^2) memory instead of TFA's O(B^3).

Public API
----------
- ``pairwise_distance(embeddings, squared=False)``: TFA's ``pairwise_distance`` (B x B).
- ``angular_distance(embeddings)``: TFA's ``angular_distance`` (B x B).
- ``distance_matrix(embeddings, distance_metric="L2")``: ``"L2"``, ``"squared-L2"``,
  ``"angular"`` or a callable ``embeddings -> [B, B]`` distance matrix.
- ``triplet_semihard_loss(labels, embeddings, margin=1.0, distance_metric="L2",
  global_batch=False)``
- ``triplet_hard_loss(labels, embeddings, margin=1.0, soft=False, distance_metric="L2",
  global_batch=False)``
- ``gather_global_batch(labels, embeddings)``: all-gathers a replica's batch (see below).
- ``TripletSemiHardLoss(margin=1.0, distance_metric="L2", global_batch=False)`` and
  ``TripletHardLoss(margin=1.0, soft=False, distance_metric="L2", global_batch=False)``:
  ``keras.losses.Loss`` subclasses for ``model.compile(loss=...)`` (``y_true``: integer labels,
  shape ``[B]`` or ``[B, 1]``; ``y_pred``: embeddings ``[B, D]``), registered as serializable
  under the package ``triplet_tfx`` so that saved ``.keras`` models reload.

Semantics (TFA's)
-----------------
Semi-hard: for every anchor-positive pair (a, p), a != p, the negative is the closest negative
strictly farther from the anchor than the positive; where there is none, the farthest negative.
The loss is the mean over all anchor-positive pairs of ``max(margin + d_ap - d_an, 0)``.
Hard: for every anchor, ``max(hardest_pos - hardest_neg + margin, 0)`` (``soft``:
``softplus(hardest_pos - hardest_neg)``), averaged over all anchors. As in TFA, an anchor
without a positive in the batch counts with ``hardest_pos = 0``.
Distances are TFA's formulas to the operation (squared norms + -2 x x^T, clamped at 0,
``sqrt(d + 1e-16 * (d <= 0))`` zeroed where ``d <= 0``, zero diagonal; angular:
``1 - cos`` of the l2-normalised embeddings, clamped at 0, zero diagonal). The value shift of
TFA's ``_masked_minimum`` / ``_masked_maximum`` (``(d - row_max) + row_max``) is reproduced,
and so is their gradient: where several negatives tie for the selected distance, the gradient
is split equally among them, like TensorFlow's ``reduce_min`` / ``reduce_max`` gradients, and
where the selected distance ties with the row's extreme (duplicated embeddings), it spreads over
the tied entries as TFA's does. float16 / bfloat16 embeddings are computed in float32 and the
loss is cast back. With float64 embeddings the distances and the gradient are float64, but the
semi-hard mining (selection and value) works on the distances rounded to float32.

Deviations from TFA
-------------------
The one deliberate deviation: degenerate batches. When the batch has no anchor-positive pair
(all labels distinct) or no negative at all (a single class), both losses return 0 with a zero
gradient. TFA returns NaN for the first (0 / 0) and a meaningless finite value for the second.
The soft hard loss uses a numerically stable softplus; TFA's ``log1p(exp(x))`` overflows to inf
for x > ~88 (ordinary at squared-L2 scales); the two agree wherever TFA is finite.
A residual, tie-only difference in the semi-hard gradient (values are equal): when an anchor has
a positive at exactly the distance of a negative (after TFA's shift by the row maximum, e.g.
duplicated embeddings with different labels), and another negative is equal to that one only
after the shift (1-ulp apart), TFA splits the gradient over both negatives; here the positive
separates them in the sorted row and the gradient goes to the first eligible one.

Memory and speed
----------------
TFA tiles the distance matrix to (B*B) x B. Here each anchor's row is sorted once (int64 keys
that pack the distance, a negative/same-label flag and the column, so that at equal distance
negatives come first); "the first negative strictly farther than d_ap" is then a prefix count
along the sorted row, and tied negatives form groups that are summed and gathered with segment
operations. O(B^2) memory, O(B^2 log B) time. The value comes from the sorted layout; the
gradient with respect to the distance matrix is a B x B matrix ``W`` (``+1/P`` at active
anchor-positive pairs, ``-1/P`` spread over the selected negatives, TFA's tie rules), applied as
``stop_gradient(loss) + sum(W * D) - stop_gradient(sum(W * D))``; the distances have a
closed-form gradient (one matmul; only the B x B output is kept for the backward pass).
On CPU outside XLA, batches above 64 sort with NumPy (``tf.numpy_function``; TensorFlow's CPU
sort is 5-10x slower) and mine the rows in blocks of ``_CHUNK_ELEMENTS`` entries, which bounds
the working memory; under XLA or with a GPU, ``tf.sort`` and one block (``SORT_IMPL`` /
``TRIPLET_TFX_SORT`` = ``"auto"``, ``"tf"`` or ``"numpy"`` overrides the choice). Keras 3 compiles
``model.fit``'s step with XLA by default on TensorFlow, where the sort and the row cumsum are
slower on CPU: for large batches on CPU, ``model.compile(..., jit_compile=False)`` is faster.

Global-batch mining
-------------------
With ``global_batch=True`` and inside a ``tf.distribute`` replica context with more than one
replica, each replica all-gathers the embeddings and labels of all replicas
(``ReplicaContext.all_gather``, in replica order), and mines over the global batch. Every
replica then computes the same global loss value. ``all_gather``'s gradient all-reduces (sums)
the upstream gradients of all replicas and hands each replica the slice of its own embeddings.

Loss-scaling convention (the one of Keras and ``tf.distribute``): each replica's loss is divided
by ``num_replicas_in_sync`` before differentiating, and gradients are summed across replicas.
- The functions return the unscaled loss: the global loss (identical on every replica) with
  ``global_batch=True``, the replica's own batch loss otherwise.
- The ``Loss`` classes return it divided by ``num_replicas_in_sync`` when called under a
  strategy with several replicas, like Keras' built-in losses (Keras skips that scaling for
  scalar losses, so the classes do it). ``model.fit`` then sums replica gradients and reports
  the unscaled loss averaged over replicas: with ``global_batch=True`` the reported loss and the
  weight updates are exactly those of one device training on the concatenated global batch.
- In a custom training loop use ``loss = fn(..., global_batch=True) / num_replicas_in_sync``
  and sum gradients (the default of ``optimizer.apply_gradients`` under a strategy); the
  gradient that reaches each replica's embeddings is then d(global loss)/d(its embeddings).
Outside a strategy (or with one replica) ``global_batch`` is a no-op.

Backend: TensorFlow only (the project's Keras backend). The mining needs bitcasts, int64 sorts,
segment reductions and, on CPU, ``tf.numpy_function``, which ``keras.ops`` does not offer on
every backend. The functions run in eager mode, in ``tf.function``, under XLA and under
``tf.distribute`` strategies.
"""
from __future__ import annotations

import os
from typing import Callable, Union

os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import ops as _tf_ops  # noqa: E402
from tensorflow.python.ops import control_flow_util as _cf_util  # noqa: E402

__all__ = [
    "pairwise_distance",
    "angular_distance",
    "distance_matrix",
    "gather_global_batch",
    "triplet_semihard_loss",
    "triplet_hard_loss",
    "TripletSemiHardLoss",
    "TripletHardLoss",
]

DistanceMetric = Union[str, Callable[[tf.Tensor], tf.Tensor]]

# Column bits in the packed sort keys: batches up to 2**20 examples.
_COL_BITS = 20


# --------------------------------------------------------------------------- distances
def _off_diagonal_mask(n, dtype=tf.float32):
    return tf.ones([n, n], dtype=dtype) - tf.linalg.diag(tf.ones([n], dtype=dtype))


def _pairwise_distance_forward(feature, squared):
    # TFA's formula, operation for operation (same float32 results).
    pairwise_distances_squared = tf.math.add(
        tf.math.reduce_sum(tf.math.square(feature), axis=[1], keepdims=True),
        tf.math.reduce_sum(tf.math.square(tf.transpose(feature)), axis=[0], keepdims=True),
    ) - 2.0 * tf.matmul(feature, tf.transpose(feature))
    pairwise_distances_squared = tf.math.maximum(pairwise_distances_squared, 0.0)
    error_mask = tf.math.less_equal(pairwise_distances_squared, 0.0)
    if squared:
        pairwise_distances = pairwise_distances_squared
    else:
        pairwise_distances = tf.math.sqrt(
            pairwise_distances_squared + tf.cast(error_mask, dtype=feature.dtype) * 1e-16
        )
    pairwise_distances = tf.math.multiply(
        pairwise_distances, tf.cast(tf.math.logical_not(error_mask), dtype=feature.dtype)
    )
    return tf.math.multiply(pairwise_distances, _off_diagonal_mask(tf.shape(feature)[0], feature.dtype))


def _gram_backward(g_sym, x):
    """d/dx of sum(G * (|x_i|^2 + |x_j|^2 - 2 x_i.x_j)) for G with G + G^T = g_sym: one matmul."""
    return 2.0 * (tf.reduce_sum(g_sym, axis=1, keepdims=True) * x - tf.matmul(g_sym, x))


def pairwise_distance(embeddings, squared: bool = False) -> tf.Tensor:
    """TFA's ``pairwise_distance``: B x B (squared) Euclidean distances, operation for operation.

    The value is TFA's to the bit; the gradient is TFA's (computed in closed form with one
    matmul, keeping only the output for the backward pass, instead of TFA's ~10 B x B
    intermediates and two matmuls).
    """

    @tf.custom_gradient
    def fn(x):
        pd = _pairwise_distance_forward(x, squared)

        def grad(g):
            # Non-zero entries are exactly the off-diagonal ones with d^2 > 0, where TFA's
            # masks pass the gradient (1 / (2 sqrt(d^2)) for L2).
            positive = pd > 0
            zeros = tf.zeros_like(pd)
            if squared:
                g2 = tf.where(positive, g, zeros)
            else:
                g2 = tf.where(positive, g / (2.0 * tf.where(positive, pd, tf.ones_like(pd))), zeros)
            return _gram_backward(g2 + tf.transpose(g2), x)

        return pd, grad

    return fn(tf.convert_to_tensor(embeddings))


def angular_distance(embeddings) -> tf.Tensor:
    """TFA's ``angular_distance``: ``1 - cos`` of the l2-normalised embeddings, B x B."""
    feature = tf.convert_to_tensor(embeddings)
    normalized = tf.math.l2_normalize(feature, axis=1)

    @tf.custom_gradient
    def fn(u):
        d = 1 - tf.matmul(u, u, transpose_b=True)
        off = _off_diagonal_mask(tf.shape(d)[0], u.dtype)
        # tf.maximum passes the gradient where d >= 0; the off-diagonal mask zeroes the diagonal.
        passes = tf.logical_and(d >= 0, tf.cast(off, tf.bool))
        out = tf.math.multiply(tf.math.maximum(d, 0.0), off)

        def grad(g):
            g2 = tf.where(passes, g, tf.zeros_like(g))
            return -tf.matmul(g2 + tf.transpose(g2), u)

        return out, grad

    return fn(normalized)


def distance_matrix(embeddings, distance_metric: DistanceMetric = "L2") -> tf.Tensor:
    """The B x B distance matrix for ``"L2"``, ``"squared-L2"``, ``"angular"`` or a callable."""
    if callable(distance_metric):
        return tf.convert_to_tensor(distance_metric(embeddings))
    if distance_metric == "L2":
        return pairwise_distance(embeddings, squared=False)
    if distance_metric == "squared-L2":
        return pairwise_distance(embeddings, squared=True)
    if distance_metric == "angular":
        return angular_distance(embeddings)
    raise ValueError(
        f"distance_metric must be 'L2', 'squared-L2', 'angular' or a callable, got {distance_metric!r}"
    )


# --------------------------------------------------------------------------- helpers
def _prepare(labels, embeddings):
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
    to each replica's own embeddings (summed over replicas, see the module docstring for the
    loss-scaling convention). Elsewhere returns the inputs unchanged.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return labels, embeddings
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    return ctx.all_gather(labels, axis=0), ctx.all_gather(embeddings, axis=0)


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
SORT_IMPL = os.environ.get("TRIPLET_TFX_SORT", "auto")


def _use_numpy_sort() -> bool:
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
    s_val = _float_from_sortable(
        tf.cast(tf.bitwise.right_shift(sorted_keys, _COL_BITS + 1), tf.int32)
    )
    # Tied negatives: consecutive negatives whose distances are equal once shifted by the row
    # maximum (TFA's _masked_minimum compares d - row_max, where rounding can merge distances
    # 1 ulp apart). Negatives sort first at equal distance, so exact ties are contiguous.
    shifted = s_val - row_max
    prev_neg = _shift_right(s_neg, False)
    prev_shifted = _shift_right(shifted, 0.0)
    new_group = tf.logical_and(
        s_neg, tf.logical_not(tf.logical_and(prev_neg, tf.equal(prev_shifted, shifted)))
    )
    gid = tf.cumsum(tf.cast(new_group, tf.int32), axis=1)
    return s_col, s_val, s_neg, gid


def _sorted_layout(keys, row_max, use_numpy):
    if use_numpy:
        outs = tf.numpy_function(
            _np_sorted_layout, [keys, row_max], [tf.int32, tf.float32, tf.bool, tf.int32],
            stateful=False,
        )
        return [tf.ensure_shape(o, keys.shape) for o in outs]
    return _tf_sorted_layout(keys, row_max)


def _shift_right(x, fill):
    """x[:, j-1] at column j, ``fill`` at column 0."""
    first = tf.fill([tf.shape(x)[0], 1], tf.constant(fill, dtype=x.dtype))
    return tf.concat([first, x[:, :-1]], axis=1)


# --------------------------------------------------------------------------- semi-hard
def _semihard_keys(pdist, same):
    """Packed sort keys: [distance (32 bits, order preserving)] [same-label flag] [column]."""
    n64 = tf.cast(tf.shape(pdist)[1], tf.int64)  # columns
    # Normalise -0.0 to +0.0 so that equal distances get equal keys.
    d = tf.where(tf.equal(pdist, 0.0), tf.zeros_like(pdist), pdist)
    key32 = tf.cast(_sortable_int32(d), tf.int64)
    cols = tf.range(n64, dtype=tf.int64)[tf.newaxis, :]
    # Sorting ascending puts, at equal distance, negatives before same-label entries.
    return key32 * (2 ** (_COL_BITS + 1)) + tf.cast(same, tf.int64) * (2**_COL_BITS) + cols


def _semihard_from_sorted(layout, pdist, same, row_ids, row_max, row_min, margin, denom):
    """Hinge sum and W = d loss / d pdist for a block of anchor rows, from their sorted keys.

    ``pdist``, ``same``, ``sorted_keys``: [m, n] rows of the matrices; ``row_ids``: [m] the
    anchors' indices (columns of their diagonal); ``denom``: the number of anchor-positive pairs
    of the whole batch (>= 1). O(m * n) memory.
    """
    s_col, s_val, s_neg, gid = layout
    m = tf.shape(s_col)[0]
    n = tf.shape(s_col)[1]
    rows = tf.range(m)[:, tf.newaxis]
    s_pos = tf.logical_and(  # anchor-positive pairs
        tf.logical_not(s_neg), tf.not_equal(s_col, tf.cast(row_ids, tf.int32)[:, tf.newaxis])
    )
    # For a positive entry, gid = number of negative groups with distance <= d_ap.
    n_groups = gid[:, -1:]
    has_negative = n_groups > 0
    outside = gid < n_groups  # a negative strictly farther than d_ap exists
    sel_gid = tf.minimum(gid + 1, n_groups)

    stride = n + 1
    num_segments = m * stride
    row_base = rows * stride
    seg_own = tf.reshape(row_base + gid, [-1])
    seg_sel = tf.reshape(row_base + sel_gid, [-1])

    zeros = tf.zeros_like(s_val)
    neg_inf = tf.fill(tf.shape(s_val), tf.constant(-float("inf"), tf.float32))
    group_val = tf.math.unsorted_segment_max(
        tf.reshape(tf.where(s_neg, s_val, neg_inf), [-1]), seg_own, num_segments
    )
    group_cnt = tf.math.unsorted_segment_sum(
        tf.reshape(tf.cast(s_neg, tf.float32), [-1]), seg_own, num_segments
    )
    sel_val = tf.reshape(tf.gather(group_val, seg_sel), [m, n])
    sel_val = tf.where(s_pos, sel_val, zeros)

    # TFA's _masked_minimum / _masked_maximum: (d - row_max) + row_max and (d - row_min) + row_min.
    negative_dist = tf.where(outside, (sel_val - row_max) + row_max, (sel_val - row_min) + row_min)

    valid = tf.logical_and(s_pos, has_negative)
    loss_mat = tf.math.add(margin, s_val - negative_dist)
    hinge_sum = tf.reduce_sum(tf.where(valid, tf.maximum(loss_mat, 0.0), zeros))

    # tf.maximum(x, 0) passes the gradient where x >= 0, as in TFA.
    w = tf.where(tf.logical_and(valid, loss_mat >= 0.0), tf.ones_like(loss_mat) / denom, zeros)
    # The gradient goes to the selected group, split equally (_masked_minimum's ties; inside
    # pairs: the last group, corrected below where TFA's ties differ).
    group_w = tf.math.unsorted_segment_sum(tf.reshape(w, [-1]), seg_sel, num_segments)
    neg_w = tf.reshape(tf.gather(tf.math.divide_no_nan(group_w, group_cnt), seg_own), [m, n])
    g_sorted = w - tf.where(s_neg, neg_w, zeros)
    # Back from the sorted layout to the original columns (a permutation of each row).
    flat_idx = tf.reshape(rows * n + s_col, [-1])
    weights = tf.reshape(
        tf.math.unsorted_segment_sum(tf.reshape(g_sorted, [-1]), flat_idx, m * n), [m, n]
    )

    # TFA's gradient when the selected negative sits at the row's extreme: _masked_minimum's
    # min over (d - row_max) * mask is then 0 and ties with every unmasked entry, and the
    # gradient of reduce_min / reduce_max spreads over those ties and over the row_max (row_min)
    # ties, positives included. Only with exactly tied distances (duplicates); rows elsewhere
    # keep the plain split above. R: the weight of the pairs concerned, per row.
    tied_max = tf.reduce_sum(tf.cast(tf.equal(pdist, row_max), tf.int32), axis=1, keepdims=True) > 1
    at_max = tf.logical_and(tf.logical_and(outside, tied_max), tf.equal(sel_val, row_max))
    at_min = tf.logical_and(tf.logical_not(outside), tf.equal(sel_val, row_min))
    r_max = tf.reduce_sum(tf.where(at_max, w, zeros), axis=1, keepdims=True)
    r_min = tf.reduce_sum(tf.where(at_min, w, zeros), axis=1, keepdims=True)

    def tie_correction():
        d = pdist
        neg = tf.cast(tf.logical_not(same), tf.float32)
        size = tf.cast(n, tf.float32)
        t_max = tf.cast(tf.equal(d, row_max), tf.float32)
        t_min = tf.cast(tf.equal(d, row_min), tf.float32)
        g_max = neg * t_max
        c_g = tf.reduce_sum(g_max, axis=1, keepdims=True)
        c_neg = tf.reduce_sum(neg, axis=1, keepdims=True)
        c_tmax = tf.reduce_sum(t_max, axis=1, keepdims=True)
        c_tmin = tf.reduce_sum(t_min, axis=1, keepdims=True)
        fix_max = (tf.math.divide_no_nan(g_max, c_g) - g_max / size
                   - t_max * tf.math.divide_no_nan(1.0 - c_g / size, c_tmax))
        fix_min = (tf.math.divide_no_nan(neg, c_neg) - neg / size
                   - t_min * tf.math.divide_no_nan(1.0 - c_neg / size, c_tmin))
        return weights + r_max * fix_max + r_min * fix_min

    weights = tf.cond(
        tf.reduce_any(tf.logical_or(r_max > 0, r_min > 0)), tie_correction, lambda: weights
    )

    # Inside pairs (no negative farther than the positive): TFA's _masked_maximum splits the
    # gradient over the negatives with d - row_min equal to the farthest one's; the last group
    # above ties on d - row_max. Both are exact equality when row_min == 0 and the farthest
    # negative is >= row_max / 2 (exact subtraction); elsewhere, move the weight over.
    last_val = tf.gather(group_val, tf.reshape(row_base + n_groups, [-1]))[:, tf.newaxis]
    needs_fix = tf.logical_or(tf.not_equal(row_min, 0.0), last_val < 0.5 * row_max)
    r_in = tf.reduce_sum(tf.where(tf.logical_not(outside), w, zeros), axis=1, keepdims=True)
    r_in = tf.where(needs_fix, r_in, tf.zeros_like(r_in))

    def inside_fix():
        neg = tf.logical_not(same)

        def split(shift):
            shifted = pdist - shift
            tied = tf.logical_and(neg, tf.equal(shifted, last_val - shift))
            tied = tf.cast(tied, tf.float32)
            return tf.math.divide_no_nan(tied, tf.reduce_sum(tied, axis=1, keepdims=True))

        return weights + r_in * (split(row_max) - split(row_min))

    weights = tf.cond(tf.reduce_any(r_in > 0), inside_fix, lambda: weights)
    return hinge_sum, weights


_semihard_keys_xla = tf.function(_semihard_keys, jit_compile=True, reduce_retracing=True)

# Rows of the distance matrix mined at a time (outside XLA): bounds the mining's memory to a few
# arrays of this many elements, whatever the batch size.
_CHUNK_ELEMENTS = 2**21


def _semihard_value_and_weights(pdist, adjacency, margin):
    """Semi-hard loss value and its gradient W = d loss / d pdist, from a B x B matrix.

    ``pdist`` must carry no gradient (float32). O(B^2) memory: W, plus the mining of at most
    ``_CHUNK_ELEMENTS`` entries at a time (one block when compiled with XLA).
    """
    n = tf.shape(pdist)[0]
    row_max = tf.reduce_max(pdist, axis=1, keepdims=True)
    row_min = tf.reduce_min(pdist, axis=1, keepdims=True)
    # Anchor-positive pairs: only if the batch has a negative at all (then every anchor has one).
    num_same = tf.reduce_sum(tf.cast(adjacency, tf.float32))
    n_f = tf.cast(n, tf.float32)
    has_negative = num_same < n_f * n_f
    denom = tf.maximum(tf.where(has_negative, num_same - n_f, 0.0), 1.0)
    static_n = pdist.shape[0]
    # Small batches: plain TensorFlow ops have less fixed overhead than NumPy + XLA calls.
    use_numpy = _use_numpy_sort() and not (static_n is not None and static_n <= 64)
    if SORT_IMPL == "numpy":
        use_numpy = True
    keys_fn = _semihard_keys_xla if use_numpy else _semihard_keys

    def block(r0, r1):
        d = pdist[r0:r1]
        same = adjacency[r0:r1]
        keys = keys_fn(d, same)
        return _semihard_from_sorted(
            _sorted_layout(keys, row_max[r0:r1], use_numpy), d, same, tf.range(r0, r1), row_max[r0:r1], row_min[r0:r1],
            margin, denom,
        )

    if not use_numpy or (static_n is not None and static_n * static_n <= 2 * _CHUNK_ELEMENTS):
        # XLA / GPU (static shapes), or a small batch: one block.
        hinge_sum, weights = block(0, n)
        return hinge_sum / denom, weights

    chunk = tf.maximum(_CHUNK_ELEMENTS // tf.maximum(n, 1), 1)
    num_chunks = (n + chunk - 1) // chunk
    parts = tf.TensorArray(tf.float32, size=num_chunks, infer_shape=False,
                           element_shape=tf.TensorShape([None, None]))

    def body(i, total, parts):
        r0 = i * chunk
        r1 = tf.minimum(r0 + chunk, n)
        h, w = block(r0, r1)
        return i + 1, total + h, parts.write(i, w)

    _, hinge_sum, parts = tf.while_loop(
        lambda i, *_: i < num_chunks, body, (tf.constant(0), tf.constant(0.0), parts),
        parallel_iterations=1,
    )
    weights = tf.reshape(parts.concat(), [n, n])
    return hinge_sum / denom, weights


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
    """TFA's ``triplet_semihard_loss`` in O(B^2) memory (see the module docstring).

    Args:
      labels: integer labels, shape ``[B]`` or ``[B, 1]`` (int32 or int64).
      embeddings: ``[B, D]`` float embeddings (not normalised by this function).
      margin: the margin of the triplet hinge.
      distance_metric: ``"L2"``, ``"squared-L2"``, ``"angular"`` or a callable returning
        the ``[B, B]`` distance matrix.
      global_batch: mine over the batch all-gathered from every replica (see module docstring).
    Returns:
      The scalar loss, in the embeddings' dtype.
    """
    labels, embeddings, out_dtype = _prepare(labels, embeddings)
    if global_batch:
        labels, embeddings = gather_global_batch(labels, embeddings)
    pdist = distance_matrix(embeddings, distance_metric)
    compute_dtype = pdist.dtype
    pdist32 = tf.cast(pdist, tf.float32)
    adjacency = tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :])
    value, weights = _semihard_value_and_weights(
        tf.stop_gradient(pdist32), adjacency, tf.cast(margin, tf.float32)
    )
    loss = _apply_weights(tf.cast(value, compute_dtype), tf.cast(weights, compute_dtype), pdist)
    return tf.cast(loss, out_dtype)


# --------------------------------------------------------------------------- hard
def _masked_maximum(data, mask, dim=1):
    axis_minimums = tf.math.reduce_min(data, dim, keepdims=True)
    return tf.math.reduce_max(tf.math.multiply(data - axis_minimums, mask), dim, keepdims=True) + axis_minimums


def _masked_minimum(data, mask, dim=1):
    axis_maximums = tf.math.reduce_max(data, dim, keepdims=True)
    return tf.math.reduce_min(tf.math.multiply(data - axis_maximums, mask), dim, keepdims=True) + axis_maximums


def triplet_hard_loss(
    labels,
    embeddings,
    margin: float = 1.0,
    soft: bool = False,
    distance_metric: DistanceMetric = "L2",
    global_batch: bool = False,
) -> tf.Tensor:
    """TFA's ``triplet_hard_loss`` (batch-hard), O(B^2) like TFA; see the module docstring.

    Args as :func:`triplet_semihard_loss`; ``soft`` replaces the hinge by a stable
    ``softplus(hardest_pos - hardest_neg)`` (the margin is then unused, as in TFA).
    """
    labels, embeddings, out_dtype = _prepare(labels, embeddings)
    if global_batch:
        labels, embeddings = gather_global_batch(labels, embeddings)
    pdist = distance_matrix(embeddings, distance_metric)
    dtype = pdist.dtype
    n = tf.shape(pdist)[0]
    adjacency = tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :])
    adjacency_not = tf.cast(tf.logical_not(adjacency), dtype)
    mask_positives = tf.cast(adjacency, dtype) - tf.linalg.diag(tf.ones([n], dtype))

    hard_negatives = _masked_minimum(pdist, adjacency_not)
    hard_positives = _masked_maximum(pdist, mask_positives)
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


# --------------------------------------------------------------------------- Keras losses
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

    def __init__(self, margin=1.0, distance_metric="L2", global_batch=False,
                 name="triplet_semihard_loss", **kwargs):
        super().__init__(margin=margin, distance_metric=distance_metric,
                         global_batch=global_batch, name=name, **kwargs)

    def call(self, y_true, y_pred):
        return _scale_for_distribution(triplet_semihard_loss(
            tf.cast(y_true, tf.int64), y_pred, margin=self.margin,
            distance_metric=self.distance_metric, global_batch=self.global_batch,
        ))


@keras.saving.register_keras_serializable(package="triplet_tfx")
class TripletHardLoss(_TripletLossBase):
    """Keras 3 batch-hard triplet loss; ``y_true``: integer labels, ``y_pred``: embeddings."""

    def __init__(self, margin=1.0, soft=False, distance_metric="L2", global_batch=False,
                 name="triplet_hard_loss", **kwargs):
        super().__init__(margin=margin, distance_metric=distance_metric,
                         global_batch=global_batch, name=name, **kwargs)
        self.soft = bool(soft)

    def get_config(self):
        config = super().get_config()
        config["soft"] = self.soft
        return config

    def call(self, y_true, y_pred):
        return _scale_for_distribution(triplet_hard_loss(
            tf.cast(y_true, tf.int64), y_pred, margin=self.margin, soft=self.soft,
            distance_metric=self.distance_metric, global_batch=self.global_batch,
        ))
