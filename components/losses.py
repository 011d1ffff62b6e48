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
is split equally among them, like TensorFlow's ``reduce_min`` / ``reduce_max`` gradients.
float16 / bfloat16 embeddings are computed in float32 and the loss is cast back.

Deviations from TFA
-------------------
The one deliberate deviation: degenerate batches. When the batch has no anchor-positive pair
(all labels distinct) or no negative at all (a single class), both losses return 0 with a zero
gradient. TFA returns NaN for the first (0 / 0) and a meaningless finite value for the second.
The soft hard loss uses a numerically stable softplus; TFA's ``log1p(exp(x))`` overflows to inf
for x > ~88 (ordinary at squared-L2 scales); the two agree wherever TFA is finite.

Memory and speed
----------------
TFA tiles the distance matrix to (B*B) x B. Here the semi-hard mining sorts each anchor's row
once (one sort of int64 keys that pack the distance, the negative/positive flag and the column),
so that "the first negative strictly greater than d_ap" becomes a prefix count along the sorted
row; negatives with equal distances form groups that are found, summed and gathered with segment
operations over ``B * (B + 1)`` segments. Everything is O(B^2) memory and O(B^2 log B) time.
The value is computed from the sorted layout; the gradient with respect to the distance matrix
is a B x B weight matrix ``W`` (``+1/P`` at active anchor-positive pairs, ``-1/P`` spread over
the selected negatives), applied as ``stop_gradient(loss) + sum(W * D) - stop_gradient(sum(W*D))``
so autodiff carries it through TFA's distance formula to the embeddings.

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

Backend: the functions use TensorFlow ops (the project's Keras backend is TensorFlow; the mining
needs bitcasts, int64 sorts and segment reductions). They run in eager mode, in ``tf.function``
and under XLA (Keras 3 compiles the train step with XLA by default on TensorFlow).
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


def pairwise_distance(embeddings, squared: bool = False) -> tf.Tensor:
    """TFA's ``pairwise_distance``: B x B (squared) Euclidean distances, operation for operation."""
    feature = tf.convert_to_tensor(embeddings)
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


def angular_distance(embeddings) -> tf.Tensor:
    """TFA's ``angular_distance``: ``1 - cos`` of the l2-normalised embeddings, B x B."""
    feature = tf.convert_to_tensor(embeddings)
    normalized = tf.math.l2_normalize(feature, axis=1)
    d = 1 - tf.matmul(normalized, normalized, transpose_b=True)
    d = tf.math.maximum(d, 0.0)
    return tf.math.multiply(d, _off_diagonal_mask(tf.shape(d)[0], feature.dtype))


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


def _np_sort_rows(keys):
    return np.sort(keys, axis=1)


def _sort_rows(keys):
    """Sorts each row of an int64 matrix ascending."""
    if _use_numpy_sort():
        out = tf.numpy_function(_np_sort_rows, [keys], tf.int64, stateful=False)
        return tf.ensure_shape(out, keys.shape)
    return tf.sort(keys, axis=1)


def _shift_right(x, fill):
    """x[:, j-1] at column j, ``fill`` at column 0."""
    first = tf.fill([tf.shape(x)[0], 1], tf.constant(fill, dtype=x.dtype))
    return tf.concat([first, x[:, :-1]], axis=1)


# --------------------------------------------------------------------------- semi-hard
def _semihard_keys(pdist, same):
    """Packed sort keys: [distance (32 bits, order preserving)] [same-label flag] [column]."""
    n64 = tf.cast(tf.shape(pdist)[0], tf.int64)
    # Normalise -0.0 to +0.0 so that equal distances get equal keys.
    d = tf.where(tf.equal(pdist, 0.0), tf.zeros_like(pdist), pdist)
    key32 = tf.cast(_sortable_int32(d), tf.int64)
    cols = tf.range(n64, dtype=tf.int64)[tf.newaxis, :]
    # Sorting ascending puts, at equal distance, negatives before same-label entries.
    return key32 * (2 ** (_COL_BITS + 1)) + tf.cast(same, tf.int64) * (2**_COL_BITS) + cols


def _semihard_from_sorted(sorted_keys, pdist, same, row_max, row_min, margin):
    """Semi-hard loss value and W = d loss / d pdist from the row-sorted keys. O(B^2) memory."""
    n = tf.shape(sorted_keys)[0]
    s_col = tf.cast(tf.bitwise.bitwise_and(sorted_keys, 2**_COL_BITS - 1), tf.int32)
    s_same = tf.not_equal(tf.bitwise.bitwise_and(sorted_keys, 2**_COL_BITS), 0)
    s_neg = tf.logical_not(s_same)
    s_val = _float_from_sortable(
        tf.cast(tf.bitwise.right_shift(sorted_keys, _COL_BITS + 1), tf.int32)
    )
    rows = tf.range(n)[:, tf.newaxis]
    s_pos = tf.logical_and(s_same, tf.not_equal(s_col, rows))  # anchor-positive pairs

    # Groups of tied negatives (contiguous in the sorted row): group ids 1..G along each row.
    prev_neg = _shift_right(s_neg, False)
    prev_val = _shift_right(s_val, 0.0)
    new_group = tf.logical_and(
        s_neg, tf.logical_not(tf.logical_and(prev_neg, tf.equal(prev_val, s_val)))
    )
    gid = tf.cumsum(tf.cast(new_group, tf.int32), axis=1)
    # For a positive entry, gid = number of negative groups with distance <= d_ap.
    n_groups = gid[:, -1:]
    has_negative = n_groups > 0
    outside = gid < n_groups  # a negative strictly farther than d_ap exists
    sel_gid = tf.minimum(gid + 1, n_groups)

    stride = n + 1
    num_segments = n * stride
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
    sel_val = tf.reshape(tf.gather(group_val, seg_sel), [n, n])
    sel_val = tf.where(s_pos, sel_val, zeros)

    # TFA's _masked_minimum / _masked_maximum: (d - row_max) + row_max and (d - row_min) + row_min.
    negative_dist = tf.where(outside, (sel_val - row_max) + row_max, (sel_val - row_min) + row_min)

    valid = tf.logical_and(s_pos, has_negative)
    loss_mat = tf.math.add(margin, s_val - negative_dist)
    num_positives = tf.reduce_sum(tf.cast(valid, tf.float32))
    denom = tf.maximum(num_positives, 1.0)
    value = tf.reduce_sum(tf.where(valid, tf.maximum(loss_mat, 0.0), zeros)) / denom

    # tf.maximum(x, 0) passes the gradient where x >= 0, as in TFA.
    w = tf.where(tf.logical_and(valid, loss_mat >= 0.0), tf.ones_like(loss_mat) / denom, zeros)
    group_w = tf.math.unsorted_segment_sum(tf.reshape(w, [-1]), seg_sel, num_segments)
    neg_w = tf.reshape(
        tf.math.divide_no_nan(tf.gather(group_w, seg_own), tf.gather(group_cnt, seg_own)), [n, n]
    )
    g_sorted = w - tf.where(s_neg, neg_w, zeros)
    # Back from the sorted layout to the original columns (a permutation of each row).
    flat_idx = tf.reshape(rows * n + s_col, [-1])
    weights = tf.reshape(
        tf.math.unsorted_segment_sum(tf.reshape(g_sorted, [-1]), flat_idx, n * n), [n, n]
    )

    # TFA's gradient when the selected negative sits at the row's extreme: _masked_minimum's
    # min over (d - row_max) * mask is then 0 and ties with every unmasked entry, and the
    # gradient of reduce_min / reduce_max spreads over those ties and over the row_max (row_min)
    # ties, positives included. Only with exactly tied distances (duplicates); rows elsewhere
    # keep the plain split above. R: the weight of the pairs concerned, per row.
    at_max = tf.logical_and(outside, tf.equal(sel_val, row_max))
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
    return value, weights


_semihard_keys_xla = tf.function(_semihard_keys, jit_compile=True, reduce_retracing=True)


def _semihard_value_and_weights(pdist, adjacency, margin):
    """Semi-hard loss value and its gradient W = d loss / d pdist, from a B x B matrix.

    ``pdist`` must carry no gradient (float32). O(B^2) memory.
    """
    row_max = tf.reduce_max(pdist, axis=1, keepdims=True)
    row_min = tf.reduce_min(pdist, axis=1, keepdims=True)
    if _use_numpy_sort():
        # CPU outside XLA: XLA-compiled elementwise parts around NumPy's fast sort.
        keys = _semihard_keys_xla(pdist, adjacency)
    else:
        keys = _semihard_keys(pdist, adjacency)
    return _semihard_from_sorted(_sort_rows(keys), pdist, adjacency, row_max, row_min, margin)


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
