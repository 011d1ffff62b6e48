"""Mining of the triplet losses: semi-hard (value and gradient from the sorted rows, in row
blocks) and hard (TFA's masked row minimum / maximum).

Memory and speed
----------------
TFA tiles the distance matrix to (B*B) x B. Here each anchor's row is sorted once (see
``sorting``); "the first negative strictly farther than d_ap" is then a prefix count along the
sorted row, and tied negatives form groups that are summed and gathered with segment
operations. O(B^2) memory, O(B^2 log B) time. The value comes from the sorted layout; the
gradient with respect to the distance matrix is a B x B matrix ``W`` (``+1/P`` at active
anchor-positive pairs, ``-1/P`` spread over the selected negatives, TFA's tie rules), applied as
``stop_gradient(loss) + sum(W * D) - stop_gradient(sum(W * D))``; the distances have a
closed-form gradient (one matmul; only the B x B output is kept for the backward pass).
On CPU outside XLA, batches above 64 sort with NumPy (``tf.numpy_function``; TensorFlow's CPU
sort is 5-10x slower) and mine the rows in blocks of ``_CHUNK_ELEMENTS`` entries, which bounds
the working memory; under XLA or with a GPU, ``tf.sort`` and one block (``sorting.SORT_IMPL`` =
``"auto"``, ``"tf"`` or ``"numpy"`` overrides the choice). Keras 3 compiles
``model.fit``'s step with XLA by default on TensorFlow, where the sort and the row cumsum are
slower on CPU: for large batches on CPU, ``model.compile(..., jit_compile=False)`` is faster.
"""

from __future__ import annotations

import tensorflow as tf

from triplet_tfx.components.training.losses import sorting


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
    group_val = tf.math.unsorted_segment_max(tf.reshape(tf.where(s_neg, s_val, neg_inf), [-1]), seg_own, num_segments)
    group_cnt = tf.math.unsorted_segment_sum(tf.reshape(tf.cast(s_neg, tf.float32), [-1]), seg_own, num_segments)
    sel_val = tf.reshape(tf.gather(group_val, seg_sel), [m, n])
    sel_val = tf.where(s_pos, sel_val, zeros)

    # TFA's masked_minimum / masked_maximum: (d - row_max) + row_max and (d - row_min) + row_min.
    negative_dist = tf.where(outside, (sel_val - row_max) + row_max, (sel_val - row_min) + row_min)

    valid = tf.logical_and(s_pos, has_negative)
    loss_mat = tf.math.add(margin, s_val - negative_dist)
    hinge_sum = tf.reduce_sum(tf.where(valid, tf.maximum(loss_mat, 0.0), zeros))

    # tf.maximum(x, 0) passes the gradient where x >= 0, as in TFA.
    w = tf.where(tf.logical_and(valid, loss_mat >= 0.0), tf.ones_like(loss_mat) / denom, zeros)
    # The gradient goes to the selected group, split equally (masked_minimum's ties; inside
    # pairs: the last group, corrected below where TFA's ties differ).
    group_w = tf.math.unsorted_segment_sum(tf.reshape(w, [-1]), seg_sel, num_segments)
    neg_w = tf.reshape(tf.gather(tf.math.divide_no_nan(group_w, group_cnt), seg_own), [m, n])
    g_sorted = w - tf.where(s_neg, neg_w, zeros)
    # Back from the sorted layout to the original columns (a permutation of each row).
    flat_idx = tf.reshape(rows * n + s_col, [-1])
    weights = tf.reshape(tf.math.unsorted_segment_sum(tf.reshape(g_sorted, [-1]), flat_idx, m * n), [m, n])

    # TFA's gradient when the selected negative sits at the row's extreme: masked_minimum's
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
        fix_max = (
            tf.math.divide_no_nan(g_max, c_g) - g_max / size - t_max * tf.math.divide_no_nan(1.0 - c_g / size, c_tmax)
        )
        fix_min = (
            tf.math.divide_no_nan(neg, c_neg) - neg / size - t_min * tf.math.divide_no_nan(1.0 - c_neg / size, c_tmin)
        )
        return weights + r_max * fix_max + r_min * fix_min

    weights = tf.cond(tf.reduce_any(tf.logical_or(r_max > 0, r_min > 0)), tie_correction, lambda: weights)

    # Inside pairs (no negative farther than the positive): TFA's masked_maximum splits the
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


_semihard_keys_xla = tf.function(sorting.semihard_keys, jit_compile=True, reduce_retracing=True)

# Rows of the distance matrix mined at a time (outside XLA): bounds the mining's memory to a few
# arrays of this many elements, whatever the batch size.
_CHUNK_ELEMENTS = 2**21


# Batches up to this size sort with tf.sort even on CPU: plain TensorFlow ops have less fixed
# overhead than a NumPy call (the tutorial recipe's batch of 32: 8 % less CPU per training step on
# 2 cores, bench/README.md).
_SMALL_BATCH = 64


def semihard_value_and_weights(pdist, adjacency, margin):
    """Semi-hard loss value and its gradient W = d loss / d pdist, from a B x B matrix.

    ``pdist`` must carry no gradient (float32). O(B^2) memory: W, plus the mining of at most
    ``_CHUNK_ELEMENTS`` entries at a time (one block when compiled with XLA).
    """
    static_n = pdist.shape[0]
    use_numpy = sorting.use_numpy_sort()
    if not use_numpy or sorting.SORT_IMPL == "numpy":
        return _semihard(pdist, adjacency, margin, use_numpy)
    if static_n is not None:
        return _semihard(pdist, adjacency, margin, static_n > _SMALL_BATCH)
    # A batch size known only at run time (Keras batches without drop_remainder): both paths
    # are in the graph, the batch's size picks one.
    return tf.cond(
        tf.shape(pdist)[0] <= _SMALL_BATCH,
        lambda: _semihard(pdist, adjacency, margin, False),
        lambda: _semihard(pdist, adjacency, margin, True),
    )


def _semihard(pdist, adjacency, margin, use_numpy):
    n = tf.shape(pdist)[0]
    row_max = tf.reduce_max(pdist, axis=1, keepdims=True)
    row_min = tf.reduce_min(pdist, axis=1, keepdims=True)
    # Anchor-positive pairs: only if the batch has a negative at all (then every anchor has one).
    num_same = tf.reduce_sum(tf.cast(adjacency, tf.float32))
    n_f = tf.cast(n, tf.float32)
    has_negative = num_same < n_f * n_f
    denom = tf.maximum(tf.where(has_negative, num_same - n_f, 0.0), 1.0)
    static_n = pdist.shape[0]
    keys_fn = _semihard_keys_xla if use_numpy else sorting.semihard_keys

    def block(r0, r1):
        d = pdist[r0:r1]
        same = adjacency[r0:r1]
        keys = keys_fn(d, same)
        return _semihard_from_sorted(
            sorting.sorted_layout(keys, row_max[r0:r1], use_numpy),
            d,
            same,
            tf.range(r0, r1),
            row_max[r0:r1],
            row_min[r0:r1],
            margin,
            denom,
        )

    if not use_numpy or (static_n is not None and static_n * static_n <= 2 * _CHUNK_ELEMENTS):
        # XLA / GPU (static shapes), or a small batch: one block.
        hinge_sum, weights = block(0, n)
        return hinge_sum / denom, weights

    chunk = tf.maximum(_CHUNK_ELEMENTS // tf.maximum(n, 1), 1)
    num_chunks = (n + chunk - 1) // chunk
    parts = tf.TensorArray(tf.float32, size=num_chunks, infer_shape=False, element_shape=tf.TensorShape([None, None]))

    def body(i, total, parts):
        r0 = i * chunk
        r1 = tf.minimum(r0 + chunk, n)
        h, w = block(r0, r1)
        return i + 1, total + h, parts.write(i, w)

    _, hinge_sum, parts = tf.while_loop(
        lambda i, *_: i < num_chunks,
        body,
        (tf.constant(0), tf.constant(0.0), parts),
        parallel_iterations=1,
    )
    weights = tf.reshape(parts.concat(), [n, n])
    return hinge_sum / denom, weights


def masked_maximum(data, mask, dim=1):
    axis_minimums = tf.math.reduce_min(data, dim, keepdims=True)
    return tf.math.reduce_max(tf.math.multiply(data - axis_minimums, mask), dim, keepdims=True) + axis_minimums


def masked_minimum(data, mask, dim=1):
    axis_maximums = tf.math.reduce_max(data, dim, keepdims=True)
    return tf.math.reduce_min(tf.math.multiply(data - axis_maximums, mask), dim, keepdims=True) + axis_maximums
