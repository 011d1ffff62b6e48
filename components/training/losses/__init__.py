"""Triplet losses for Keras 3: drop-in replacements for TensorFlow Addons' triplet losses.

TensorFlow Addons (TFA) is end-of-life and cannot be imported next to Keras 3, but models of
this project were trained with ``tfa.losses.TripletSemiHardLoss``. This package computes the same
losses, with the same numbers and the same gradients as TFA 0.23.0 (checked against golden
values recorded with TFA in ``tests/golden``), in O(B^2) memory instead of TFA's O(B^3) (see
``mining``'s docstring: "Memory and speed").

Modules
-------
- ``distances``: the B x B distance matrices (TFA's formulas, closed-form gradients).
- ``inputs``: labels and embeddings as the losses take them; the all-gathered global batch.
- ``sorting``: the packed sort keys and sorted rows of the semi-hard mining; the sort
  implementation is ``sorting.SORT_IMPL`` (read at call time: set it there, not on this package).
- ``mining``: semi-hard mining in row blocks (``_CHUNK_ELEMENTS``), hard mining.
- ``semihard``, ``hard``: the two losses; ``keras_losses``: their ``keras.losses.Loss`` classes.

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

os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

from triplet_tfx.components.training.losses.distances import (  # noqa: E402
    DistanceMetric,
    angular_distance,
    distance_matrix,
    pairwise_distance,
)
from triplet_tfx.components.training.losses.hard import triplet_hard_loss  # noqa: E402
from triplet_tfx.components.training.losses.inputs import gather_global_batch  # noqa: E402
from triplet_tfx.components.training.losses.keras_losses import (  # noqa: E402
    TripletHardLoss,
    TripletSemiHardLoss,
)
from triplet_tfx.components.training.losses.semihard import triplet_semihard_loss  # noqa: E402

__all__ = [
    "DistanceMetric",
    "pairwise_distance",
    "angular_distance",
    "distance_matrix",
    "gather_global_batch",
    "triplet_semihard_loss",
    "triplet_hard_loss",
    "TripletSemiHardLoss",
    "TripletHardLoss",
]
