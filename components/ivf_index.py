"""An approximate nearest-neighbour index (IVF: inverted file) that a stock TF Serving binary runs.

Shared by the evaluator (which reports the recall of the index the configuration serves) and the
serving stage (which serves it). Exact search (`nearest`, also the reference of
`recall_against_exact`) compares a query with every reference embedding: fine up to a few
hundred thousand items, wrong at 1-100 million. This module partitions the references by k-means
("coarse quantizer", `lists` centroids) and, for a query, only scores the items of the `nprobe`
lists whose centroids are nearest to it. Everything the search needs lives in the SavedModel as
non-trainable variables (a checkpoint, no 2 GB proto limit) and the search is made of standard
TensorFlow ops only (matmul, argsort, ragged.range, gather, einsum, top_k): no ScaNN or custom ops.

Building (offline, NumPy):

    centroids = train_quantizer(sample, lists=default_lists(n), iterations=10, seed=0)
    state = build(embeddings, ids, labels, centroids, storage="int8", scale="vector")
    module = IvfIndex(state)              # tf.Module; module.search(queries, k, nprobe)
    tf.saved_model.save(module, path, signatures={"ivf_search": module.search})

Storage: the vectors are grouped by list (stored order = sorted by list id, stable in the input
order within a list; per-list `offsets` and `lengths`); `ids` and `labels` are kept in the same
stored order, and `search` answers indices into that order. Vectors are kept as

* ``storage="float32"``: scored exactly (no re-ranking needed);
* ``storage="int8"``, ``scale="vector"``: symmetric int8 codes, one scale per vector
  (scale = max|x| / 127, x ~= code * scale); the query-code dot product is scaled once per item;
* ``storage="int8"``, ``scale="dimension"``: one scale per dimension (max |x_j| over the build
  set / 127); the query is multiplied by the scales once, then dotted with the codes.

With int8 codes, ``keep_float32=True`` also keeps the float32 vectors: the best
``rerank = max(RERANK_MULTIPLE * k, MIN_RERANK)`` candidates by the approximate distance are then
re-ranked exactly, and the distances returned are exact. Without them the approximate distances
are returned: the distances to the dequantised vectors x^ (|q|^2 - 2 q.x^ + |x^|^2, |x^|^2 stored
per item).

Distances are Euclidean, computed as `nearest` (below) computes them (|q|^2 - 2 q.r + |r|^2,
clamped at zero); equal distances are ordered by the smaller stored index, as the exact search
orders them (candidates are laid out in ascending stored order and tf.math.top_k keeps the lower
position first). A query always gets k answers: lists are probed in centroid order past `nprobe`
until they hold at least k items.

Incremental additions (`add`) assign the new items to the EXISTING lists and quantise them with
the existing scales: no re-clustering, and stored indices of existing items may move (items are
re-grouped by list; ids move with them). `rebuild_reasons` says when a rebuild (new k-means over
the whole catalogue) is recommended: lists grown unbalanced (largest list > IMBALANCE_LIMIT x
the mean: latency grows with the probed lists' sizes and recall drops for the items crowded into
them), the catalogue grown by more than GROWTH_LIMIT since the quantizer was trained (the
centroids no longer describe the data), per-dimension int8 codes saturating on the new items, or a
measured recall@10 (against exact search on a held-out sample) that has dropped below the target.

`choose_index` picks `exact` below INDEX_AUTO_EXACT_LIMIT items (the exact matmul is faster than the
IVF's fixed costs there and always right) and `ivf` above.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence, cast

import numpy as np
import tensorflow as tf

from triplet_tfx.components.config import INDEX_AUTO_EXACT_LIMIT, INDEX_STORAGES

RERANK_MULTIPLE = 4  # re-rank max(4 k, 64) candidates exactly when float32 vectors are kept
MIN_RERANK = 64
IMBALANCE_LIMIT = 8.0  # rebuild_reasons: largest list > 8 x the mean list size
GROWTH_LIMIT = 1.0  # rebuild_reasons: catalogue more than doubled since the quantizer was trained
SATURATION_LIMIT = 0.001  # rebuild_reasons: > 0.1 % of the added int8 codes clipped (per-dimension scales)
SCALES = ("vector", "dimension")


# ----------------------------------------------------------------------------------------- rules


def choose_index(catalog_size: int, exact_limit: int = INDEX_AUTO_EXACT_LIMIT) -> str:
    """`auto` mode: "exact" below `exact_limit` items, "ivf" from there on."""
    if catalog_size < 0:
        raise ValueError(f"catalog size must be >= 0, got {catalog_size}")
    return "exact" if catalog_size < exact_limit else "ivf"


def served_kind(setting: str, catalog_size: int) -> str:
    """The index kind --index gives (exact or ivf; auto: `choose_index`'s choice for the size)."""
    return choose_index(catalog_size) if setting == "auto" else setting


def served_nprobe(setting: int, lists: int) -> int:
    """The lists `search` probes: --index-nprobe, or `default_nprobe` for 0; at most the lists."""
    nprobe = setting or default_nprobe(lists)
    if nprobe > lists:
        raise ValueError(f"--index-nprobe {nprobe}: the index has {lists} lists")
    return nprobe


def default_lists(catalog_size: int) -> int:
    """The number of lists: the power of two nearest to 4 sqrt(n) (n = 1M -> 4096, 60k -> 1024),
    at most n / 16 (lists of at least ~16 items), at least 1."""
    if catalog_size < 1:
        raise ValueError(f"catalog size must be >= 1, got {catalog_size}")
    target = 4.0 * math.sqrt(catalog_size)
    lists = 2 ** int(round(math.log2(target)))
    while lists > 1 and lists * 16 > catalog_size:
        lists //= 2
    return max(1, lists)


def default_nprobe(lists: int) -> int:
    """The number of lists probed per query: lists / 128 (4096 -> 32, 1024 -> 8), at least 4
    (or all lists when there are fewer). Measured (bench/bench_index.py) at recall@10 >= 0.95 on
    clustered unit-norm embeddings; raise it for less clustered data."""
    if lists < 1:
        raise ValueError(f"lists must be >= 1, got {lists}")
    return min(lists, max(4, lists // 128))


def rerank_count(k: int) -> int:
    return max(RERANK_MULTIPLE * k, MIN_RERANK)


# ----------------------------------------------------------------------------- coarse quantizer


def _squared_distances(x: np.ndarray, centroids: np.ndarray, centroid_norms: np.ndarray) -> np.ndarray:
    return centroid_norms[None, :] - 2.0 * (x @ centroids.T)  # + |x|^2, constant per row


def assign(embeddings: np.ndarray, centroids: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """The nearest centroid (squared L2; ties -> the lower centroid id) of each embedding: int32 [n]."""
    x = np.asarray(embeddings, np.float32)
    c = np.asarray(centroids, np.float32)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"assign: embeddings {x.shape} and centroids {c.shape} must be [n, d] and [lists, d]")
    norms = np.einsum("ij,ij->i", c, c)
    out = np.empty(x.shape[0], np.int32)
    for start in range(0, x.shape[0], chunk):
        out[start : start + chunk] = np.argmin(_squared_distances(x[start : start + chunk], c, norms), axis=1)
    return out


def train_quantizer(
    sample: np.ndarray, lists: int, iterations: int = 10, seed: int = 0, init: str = "auto"
) -> np.ndarray:
    """k-means (Lloyd) on `sample` [n, d]: float32 centroids [lists, d].

    init: "kmeans++" (seeded D^2 sampling), "random" (distinct sample points, seeded; what faiss
    does) or "auto" (k-means++ up to 256 lists, random beyond: k-means++ is `lists` sequential
    passes over the sample). An emptied cluster is re-seeded with the sample point farthest from
    its centroid. A sample of 40-256 points per list is enough (faiss warns below 39)."""
    x = np.asarray(sample, np.float32)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"train_quantizer: sample must be [n >= 1, d], got {x.shape}")
    if not 1 <= lists <= x.shape[0]:
        raise ValueError(f"train_quantizer: lists must be in [1, {x.shape[0]}] (the sample size), got {lists}")
    if init not in ("auto", "kmeans++", "random"):
        raise ValueError(f"train_quantizer: init must be auto, kmeans++ or random, got {init!r}")
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    if init == "kmeans++" or (init == "auto" and lists <= 256):
        centroids = np.empty((lists, x.shape[1]), np.float32)
        centroids[0] = x[rng.integers(n)]
        closest = np.einsum("ij,ij->i", x - centroids[0], x - centroids[0])
        for j in range(1, lists):
            total = float(closest.sum())
            pick = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
            centroids[j] = x[pick]
            closest = np.minimum(closest, np.einsum("ij,ij->i", x - centroids[j], x - centroids[j]))
    else:
        centroids = x[rng.choice(n, size=lists, replace=False)].copy()
    x_norms = np.einsum("ij,ij->i", x, x)
    for _ in range(max(0, iterations)):
        labels = assign(x, centroids)
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=lists)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        present = counts > 0
        sums = np.add.reduceat(x[order], starts[present], axis=0)
        centroids[present] = sums / counts[present, None]
        empty = np.flatnonzero(~present)
        if empty.size:
            # farthest points from their (new) centroids re-seed the empty clusters
            own = (
                x_norms
                + _squared_distances(x, centroids, np.einsum("ij,ij->i", centroids, centroids))[np.arange(n), labels]
            )
            far = np.argsort(-own, kind="stable")[: empty.size]
            centroids[empty] = x[far]
    return np.ascontiguousarray(centroids, np.float32)


# --------------------------------------------------------------------------------------- storage


def quantize(x: np.ndarray, scale: str = "vector", scales: Optional[np.ndarray] = None):
    """Symmetric int8 codes of x [n, d]: (codes int8 [n, d], scales, clipped fraction).

    scale="vector": scales [n] = max_j |x_ij| / 127 (never clips); "dimension": scales [d] =
    max_i |x_ij| / 127 over x, or the given `scales` (codes beyond +-127 clip: `add` with the
    build's scales). A zero scale (an all-zero row or dimension) is stored as 1."""
    x = np.asarray(x, np.float32)
    if scale not in SCALES:
        raise ValueError(f"quantize: scale must be one of {SCALES}, got {scale!r}")
    if scales is None:
        axis = 1 if scale == "vector" else 0
        scales = np.abs(x).max(axis=axis) / 127.0 if x.size else np.ones(x.shape[1 - axis], np.float32)
        scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    scales = np.asarray(scales, np.float32)
    divided = x / (scales[:, None] if scale == "vector" else scales[None, :])
    rounded = np.rint(divided)
    clipped = float(np.mean(np.abs(rounded) > 127)) if rounded.size else 0.0
    return np.clip(rounded, -127, 127).astype(np.int8), scales, clipped


def dequantize(codes: np.ndarray, scales: np.ndarray, scale: str = "vector") -> np.ndarray:
    codes = np.asarray(codes, np.float32)
    return codes * (scales[:, None] if scale == "vector" else scales[None, :])


@dataclasses.dataclass
class IvfState:
    """The index as NumPy arrays, in stored order (grouped by list, ascending list id)."""

    centroids: np.ndarray  # float32 [lists, d]
    offsets: np.ndarray  # int32 [lists]: first stored index of each list
    lengths: np.ndarray  # int32 [lists]
    list_ids: np.ndarray  # int32 [n]: the list of each stored item
    vectors: np.ndarray  # float32 [n, d] (storage float32) or int8 codes [n, d]
    scales: Optional[np.ndarray]  # int8: float32 [n] (vector) or [d] (dimension); else None
    float_vectors: Optional[np.ndarray]  # int8 + keep_float32: float32 [n, d]; else None
    squared_norms: np.ndarray  # float32 [n]: |x|^2 of the float32 vectors
    ids: np.ndarray  # object (str) [n]
    labels: np.ndarray  # int64 [n]
    storage: str = "int8"
    scale: str = "vector"
    trained_size: int = 0  # items when the quantizer was trained (rebuild_reasons)
    clipped_fraction: float = 0.0  # int8 dimension scales: codes clipped by `add`s

    @property
    def size(self) -> int:
        return int(self.list_ids.shape[0])

    @property
    def lists(self) -> int:
        return int(self.centroids.shape[0])

    def float32(self) -> np.ndarray:
        """The float32 vectors in stored order (dequantised codes when only int8 is kept)."""
        if self.storage == "float32":
            return self.vectors
        if self.float_vectors is not None:
            return self.float_vectors
        # int8 storage always has its scales
        return dequantize(self.vectors, cast(np.ndarray, self.scales), self.scale)


def _group(list_ids: np.ndarray, lists: int):
    order = np.argsort(list_ids, kind="stable")
    lengths = np.bincount(list_ids, minlength=lists).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if lengths.sum() >= 2**31:
        raise ValueError("an index holds at most 2^31 - 1 items (int32 positions): shard it")
    return order, offsets.astype(np.int32), lengths.astype(np.int32)


def _check_items(embeddings, ids, labels, d: Optional[int] = None):
    x = np.asarray(embeddings, np.float32)
    if x.ndim != 2 or not len(ids) == len(labels) == x.shape[0]:
        raise ValueError(
            f"ivf index: {len(ids)} ids, {len(labels)} labels and embeddings {x.shape} "
            "(must be [n, d] with n ids and n labels)"
        )
    if d is not None and x.shape[1] != d:
        raise ValueError(f"ivf index: embeddings have {x.shape[1]} dimensions, the index {d}")
    if not np.all(np.isfinite(x)):
        raise ValueError("ivf index: embeddings must be finite")
    return x, np.asarray(ids, dtype=object), np.asarray(labels, np.int64)


def build(
    embeddings: np.ndarray,
    ids: Sequence[str],
    labels: Sequence[int],
    centroids: np.ndarray,
    storage: str = "int8",
    scale: str = "vector",
    keep_float32: bool = False,
    trained_size: Optional[int] = None,
    list_ids: Optional[np.ndarray] = None,
) -> IvfState:
    """The index of `embeddings` [n, d] over the given centroids (see `train_quantizer`);
    `list_ids`: `assign(embeddings, centroids)` when already computed (several storages, one assignment)."""
    if storage not in INDEX_STORAGES:
        raise ValueError(f"ivf index: storage must be one of {INDEX_STORAGES}, got {storage!r}")
    if scale not in SCALES:
        raise ValueError(f"ivf index: scale must be one of {SCALES}, got {scale!r}")
    centroids = np.ascontiguousarray(centroids, np.float32)
    x, ids, labels = _check_items(embeddings, ids, labels, centroids.shape[1])
    if x.shape[0] < 1:
        raise ValueError("ivf index: at least one item")
    list_ids = assign(x, centroids) if list_ids is None else np.asarray(list_ids, np.int32)
    if list_ids.shape != (x.shape[0],) or list_ids.min() < 0 or list_ids.max() >= centroids.shape[0]:
        raise ValueError(f"ivf index: list_ids must be [{x.shape[0]}] ids of the {centroids.shape[0]} lists")
    order, offsets, lengths = _group(list_ids, centroids.shape[0])
    x = x[order]
    if storage == "float32":
        vectors, scales, keep = x, None, None
    else:
        vectors, scales, _ = quantize(x, scale)
        keep = x if keep_float32 else None
    return IvfState(
        centroids=centroids,
        offsets=offsets,
        lengths=lengths,
        list_ids=list_ids[order],
        vectors=vectors,
        scales=scales,
        float_vectors=keep,
        squared_norms=np.einsum("ij,ij->i", x, x).astype(np.float32),
        ids=ids[order],
        labels=labels[order],
        storage=storage,
        scale=scale,
        trained_size=int(trained_size if trained_size is not None else x.shape[0]),
    )


def add(state: IvfState, new_embeddings: np.ndarray, ids: Sequence[str], labels: Sequence[int]) -> IvfState:
    """A new state with the items added to the EXISTING lists (nearest centroid; no re-clustering,
    the build's int8 scales). Within a list, existing items keep their order and new ones follow;
    stored indices of existing items move (the lists are re-packed): read ids from the new state.
    See `rebuild_reasons` for when to rebuild instead."""
    x, ids, labels = _check_items(new_embeddings, ids, labels, state.centroids.shape[1])
    if x.shape[0] == 0:
        return dataclasses.replace(state)
    new_lists = assign(x, state.centroids)
    clipped = 0.0
    if state.storage == "float32":
        new_vectors = x
    elif state.scale == "vector":
        new_vectors, new_scales, _ = quantize(x, "vector")
    else:
        new_vectors, _, clipped = quantize(x, "dimension", state.scales)
    list_ids = np.concatenate([state.list_ids, new_lists])
    order, offsets, lengths = _group(list_ids, state.lists)
    scales = state.scales
    if state.storage == "int8" and state.scale == "vector":
        scales = np.concatenate([state.scales, new_scales])[order]
    float_vectors = None if state.float_vectors is None else np.concatenate([state.float_vectors, x])[order]
    total = state.size + x.shape[0]
    return IvfState(
        centroids=state.centroids,
        offsets=offsets,
        lengths=lengths,
        list_ids=list_ids[order],
        vectors=np.concatenate([state.vectors, new_vectors])[order],
        scales=scales,
        float_vectors=float_vectors,
        squared_norms=np.concatenate([state.squared_norms, np.einsum("ij,ij->i", x, x).astype(np.float32)])[order],
        ids=np.concatenate([state.ids, ids])[order],
        labels=np.concatenate([state.labels, labels])[order],
        storage=state.storage,
        scale=state.scale,
        trained_size=state.trained_size,
        clipped_fraction=(state.clipped_fraction * state.size + clipped * x.shape[0]) / total,
    )


SAMPLE_PER_LIST = 40  # build_for: k-means sample size per list (faiss warns below 39)


def build_for(
    embeddings: np.ndarray,
    ids: Sequence[str],
    labels: Sequence[int],
    lists: int = 0,
    storage: str = "int8",
    seed: int = 0,
) -> IvfState:
    """The index of a catalogue from scratch: k-means (10 iterations) on a seeded sample of
    SAMPLE_PER_LIST items per list, then `build` (per-vector scales for int8, no float32 copy).
    lists 0: `default_lists`."""
    x = np.asarray(embeddings, np.float32)
    lists = lists or default_lists(x.shape[0])
    if not 1 <= lists <= x.shape[0]:
        raise ValueError(f"ivf index: lists must be in [1, {x.shape[0]}] (the number of items), got {lists}")
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(x.shape[0], min(x.shape[0], SAMPLE_PER_LIST * lists), replace=False))]
    return build(x, ids, labels, train_quantizer(sample, lists, iterations=10, seed=seed), storage=storage)


def recall(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row of `exact` [Q, k] (indices or ids) found in the same row of
    `approximate` [Q, k]: recall@k of an approximate search against exact search."""
    approximate, exact = np.asarray(approximate), np.asarray(exact)
    if approximate.shape != exact.shape or approximate.ndim != 2 or exact.shape[1] < 1:
        raise ValueError(f"recall: two [Q, k >= 1] arrays of one shape, got {approximate.shape} and {exact.shape}")
    found = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate, exact)]
    return float(np.mean(found)) / exact.shape[1] if found else 1.0


def rebuild_reasons(state: IvfState, recall_at_10: Optional[float] = None, target_recall: float = 0.95) -> List[str]:
    """Why the index should be rebuilt (re-clustered), empty when it need not be."""
    reasons = []
    mean = state.size / state.lists
    if state.lists > 1 and state.lengths.max() > IMBALANCE_LIMIT * mean:
        reasons.append(
            f"list sizes unbalanced: largest list {int(state.lengths.max())} items, "
            f"> {IMBALANCE_LIMIT:g} x the mean {mean:.1f}"
        )
    if state.trained_size and state.size > (1.0 + GROWTH_LIMIT) * state.trained_size:
        reasons.append(
            f"catalogue grew from {state.trained_size} to {state.size} items since the quantizer was trained"
        )
    if state.clipped_fraction > SATURATION_LIMIT:
        reasons.append(
            f"{state.clipped_fraction:.2%} of the int8 codes are clipped (per-dimension scales "
            "of the build no longer cover the added items)"
        )
    if recall_at_10 is not None and recall_at_10 < target_recall:
        reasons.append(f"recall@10 {recall_at_10:.3f} < target {target_recall:.3f}")
    return reasons


def memory_bytes(state: IvfState) -> int:
    """Bytes the index holds in memory (the served variables): arrays' sizes, plus each id's UTF-8
    bytes and 24 bytes of TF string header (tstring)."""
    arrays = [
        state.centroids,
        state.offsets,
        state.lengths,
        state.list_ids,
        state.vectors,
        state.squared_norms,
        state.labels,
    ]
    arrays += [a for a in (state.scales, state.float_vectors) if a is not None]
    total = sum(int(a.nbytes) for a in arrays) + 4 * state.lists  # + the centroids' squared norms
    if state.storage == "int8":
        total += 4 * state.size  # + the codes' squared norms
    total += sum(len(str(i).encode("utf-8")) for i in state.ids) + 24 * state.size
    return total


# ------------------------------------------------------------------------------------ the search


class IvfIndex(tf.Module):
    """The index as non-trainable variables, and its `search` tf.function.

    search(queries [Q, d] float32, k int32 [], nprobe int32 []) ->
        (indices [Q, k] int32 into the stored order, distances [Q, k] float32, ascending)
    `ids` and `labels` hold the stored order's ids and labels (gather with the indices).

    Cost per query: a [d] x [d, lists] matmul and top_k over the lists, then M ~ nprobe x n / lists
    candidates gathered and scored ([M, d] matmul for a single query, a batched matvec for
    several). Transient memory is Q x M x d x 5 bytes for int8 (the gathered codes and their
    float32 cast; 4 bytes for float32 storage): ~10 MB per query at n = 1M, 4096 lists,
    nprobe 32, so split large batches (e.g. <= 64 queries a call) upstream."""

    def __init__(self, state: IvfState, name: Optional[str] = None):
        super().__init__(name=name)
        if state.size < 1:
            raise ValueError("ivf index: at least one item")
        self.storage, self.scale = state.storage, state.scale
        self.reranks = state.storage == "int8" and state.float_vectors is not None
        self.dimension = int(state.centroids.shape[1])

        def variable(value, name, dtype=None):
            return tf.Variable(value, trainable=False, name=name, dtype=dtype)

        self.centroids = variable(state.centroids, "centroids")
        self.centroid_squared_norms = variable(
            np.einsum("ij,ij->i", state.centroids, state.centroids), "centroid_squared_norms"
        )
        self.offsets = variable(state.offsets.astype(np.int32), "offsets")
        self.lengths = variable(state.lengths.astype(np.int32), "lengths")
        self.list_ids = variable(state.list_ids.astype(np.int32), "list_ids")
        self.vectors = variable(state.vectors, "vectors")
        self.squared_norms = variable(state.squared_norms.astype(np.float32), "squared_norms")
        # int8: the approximate distance is the distance to the dequantised vector x^ (|x^|^2 here):
        # its error 2 (x - q).(x^ - x) + |x^ - x|^2 vanishes for the near neighbours that matter
        if state.storage == "float32":
            approximate = np.zeros([0], np.float32)
        else:
            restored = dequantize(state.vectors, cast(np.ndarray, state.scales), state.scale)  # int8: scales set
            approximate = np.einsum("ij,ij->i", restored, restored)
        self.code_squared_norms = variable(approximate.astype(np.float32), "code_squared_norms")
        self.scales = variable(state.scales if state.scales is not None else np.zeros([0], np.float32), "scales")
        self.float_vectors = variable(
            state.float_vectors if self.reranks else np.zeros([0, self.dimension], np.float32), "float_vectors"
        )
        self.ids = variable(np.asarray(state.ids, dtype=object), "ids", dtype=tf.string)
        self.labels = variable(np.asarray(state.labels, np.int64), "labels")
        self.layout = variable(f"{state.storage}/{state.scale}", "layout", tf.string)
        self.trained_size = variable(np.int64(state.trained_size), "trained_size")
        self.search = tf.function(
            self._search,
            input_signature=[
                tf.TensorSpec([None, self.dimension], tf.float32, name="queries"),
                tf.TensorSpec([], tf.int32, name="k"),
                tf.TensorSpec([], tf.int32, name="nprobe"),
            ],
            autograph=False,
        )

    def _search(self, queries, k, nprobe):
        size = tf.shape(self.list_ids)[0]
        lists = tf.shape(self.offsets)[0]
        checks = [
            tf.debugging.assert_greater_equal(k, 1, message="k must be at least 1"),
            tf.debugging.assert_less_equal(k, size, message="k must be at most the index size (the number of items)"),
            tf.debugging.assert_greater_equal(nprobe, 1, message="nprobe must be at least 1"),
            tf.debugging.assert_less_equal(nprobe, lists, message="nprobe must be at most the number of lists"),
        ]
        with tf.control_dependencies(checks):
            queries = tf.identity(queries)
        query_norms = tf.reduce_sum(queries * queries, axis=1, keepdims=True)  # [Q, 1]

        # 1. coarse: probe the nprobe lists with the nearest centroids (top_k: ties -> lower list id),
        #    and, where those hold fewer than k items, further lists in centroid order until they do
        coarse = tf.matmul(queries, self.centroids, transpose_b=True) * -2.0 + self.centroid_squared_norms[None, :]
        _, nearest = tf.math.top_k(-coarse, k=nprobe, sorted=False)  # [Q, nprobe]
        enough = tf.reduce_all(tf.reduce_sum(tf.gather(self.lengths, nearest), axis=1) >= k)

        def widened():
            order = tf.argsort(coarse, axis=1, stable=True)  # [Q, L]
            before = tf.cumsum(tf.gather(self.lengths, order), axis=1, exclusive=True)
            probed = tf.logical_or(tf.range(lists)[None, :] < nprobe, before < k)
            width = tf.reduce_max(tf.reduce_sum(tf.cast(probed, tf.int32), axis=1))
            return tf.where(probed, order, lists)[:, :width]  # `lists`: none

        probes = tf.cond(enough, lambda: nearest, widened)
        # probed list ids ascending, so that candidates come in ascending stored order
        probes = tf.sort(probes, axis=1)  # [Q, P]
        valid = probes < lists
        safe = tf.minimum(probes, lists - 1)
        starts = tf.gather(self.offsets, safe)
        counts = tf.where(valid, tf.gather(self.lengths, safe), 0)

        # 2. candidates: the probed lists' ranges, per query, padded with `size`
        ranges = tf.ragged.range(tf.reshape(starts, [-1]), tf.reshape(starts + counts, [-1]))
        per_query = tf.RaggedTensor.from_row_lengths(ranges.flat_values, tf.reduce_sum(counts, axis=1))
        positions = per_query.to_tensor(default_value=size)  # [Q, M]
        present = positions < size
        safe_positions = tf.minimum(positions, size - 1)

        # 3. approximate (int8) or exact (float32) scores
        stored = tf.gather(self.vectors, safe_positions)  # [Q, M, d]
        if self.storage == "float32":
            dots = _dots(stored, queries)
        elif self.scale == "vector":
            dots = _dots(tf.cast(stored, tf.float32), queries) * tf.gather(self.scales, safe_positions)
        else:
            dots = _dots(tf.cast(stored, tf.float32), queries * self.scales[None, :])
        norms = self.squared_norms if self.storage == "float32" else self.code_squared_norms
        squared = self._squared(dots, query_norms, norms, safe_positions, present)
        candidates = tf.shape(positions)[1]

        if not self.reranks:
            negated, best = tf.math.top_k(-squared, k=k, sorted=True)
            return tf.gather(positions, best, batch_dims=1), tf.sqrt(-negated)

        # 4. re-rank the best `rerank` candidates exactly against the float32 vectors
        rerank = tf.minimum(tf.maximum(k * RERANK_MULTIPLE, MIN_RERANK), candidates)
        _, best = tf.math.top_k(-squared, k=rerank, sorted=False)
        kept = tf.sort(tf.gather(positions, best, batch_dims=1), axis=1)  # ascending: ties -> lower index
        kept_present = kept < size
        safe_kept = tf.minimum(kept, size - 1)
        exact = _dots(tf.gather(self.float_vectors, safe_kept), queries)
        squared = self._squared(exact, query_norms, self.squared_norms, safe_kept, kept_present)
        negated, final = tf.math.top_k(-squared, k=k, sorted=True)
        return tf.gather(kept, final, batch_dims=1), tf.sqrt(-negated)

    @staticmethod
    def _squared(dots, query_norms, norms, positions, present):
        squared = tf.maximum(dots * -2.0 + query_norms + tf.gather(norms, positions), 0.0)
        return tf.where(present, squared, np.inf)


def _dots(vectors, queries):
    """[Q, M] dot products of vectors [Q, M, d] with queries [Q, d]: one 2-D matmul for a single
    query (3x faster on CPU than the batched matvec it otherwise is)."""
    return tf.cond(
        tf.equal(tf.shape(queries)[0], 1),
        lambda: tf.transpose(tf.matmul(vectors[0], queries, transpose_b=True)),
        lambda: tf.linalg.matvec(vectors, queries),
    )


def state_of(module) -> IvfState:
    """The IvfState of an IvfIndex, or of one restored by tf.saved_model.load (for `add`)."""
    storage, scale = module.layout.numpy().decode("utf-8").split("/")
    float_vectors = module.float_vectors.numpy()
    return IvfState(
        centroids=module.centroids.numpy(),
        offsets=module.offsets.numpy(),
        lengths=module.lengths.numpy(),
        list_ids=module.list_ids.numpy(),
        vectors=module.vectors.numpy(),
        scales=module.scales.numpy() if storage == "int8" else None,
        float_vectors=float_vectors if float_vectors.shape[0] else None,
        squared_norms=module.squared_norms.numpy(),
        ids=np.array([i.decode("utf-8") for i in module.ids.numpy()], dtype=object),
        labels=module.labels.numpy(),
        storage=storage,
        scale=scale,
        trained_size=int(module.trained_size.numpy()),
    )


def nearest(queries: tf.Tensor, references: tf.Tensor, reference_squared_norms: tf.Tensor, k: tf.Tensor):
    """(indices [Q, k] int32, distances [Q, k] float32) of the k nearest references, ascending."""
    squared = tf.matmul(queries, references, transpose_b=True) * -2.0
    squared += tf.reduce_sum(queries * queries, axis=1, keepdims=True)
    squared = tf.maximum(squared + reference_squared_norms[None, :], 0.0)
    negated, indices = tf.math.top_k(-squared, k=k, sorted=True)
    return indices, tf.sqrt(-negated)


def recall_against_exact(
    module: "IvfIndex",
    nprobe: int,
    queries: np.ndarray,
    embeddings: np.ndarray,
    ids: Sequence[str],
    k: int = 10,
    batch: int = 64,
) -> float:
    """Recall@k of an ivf index (a ServingModel's `ivf`, or one built to measure it) searched with
    `nprobe` lists against exact search of the same references (`embeddings`, `ids`: the catalogue
    in its own order), for `queries` [Q, d]."""
    stored_ids = np.array([i.decode("utf-8") for i in module.ids.numpy()], dtype=object)
    references = tf.constant(np.asarray(embeddings, np.float32))
    norms = tf.reduce_sum(references * references, axis=1)
    k = min(k, len(ids))
    found, expected = [], []
    for start in range(0, len(queries), batch):
        chunk = tf.constant(np.asarray(queries[start : start + batch], np.float32))
        found.append(stored_ids[module.search(chunk, k, nprobe)[0].numpy()])
        expected.append(np.asarray(ids, dtype=object)[nearest(chunk, references, norms, k)[0].numpy()])
    return recall(np.concatenate(found), np.concatenate(expected))
