"""Retrieval and clustering metrics for embeddings, in pure NumPy (plus scikit-learn for NMI/AMI).

Exact k-nearest neighbours by Euclidean distance with bounded memory, and the metrics of
"A Metric Learning Reality Check" (Musgrave et al., 2020), defined as in
pytorch-metric-learning's ``AccuracyCalculator``:

* Precision@1 (= Recall@1): the nearest reference has the query's class.
* Recall@K: at least one of the K nearest references has the query's class.
* R-Precision: with R the number of references of the query's class, the fraction of the
  R nearest references that have the query's class.
* MAP@R: ``(1/R) * sum_{i=1..R} P(i) * rel(i)`` with P(i) the precision among the i nearest
  and rel(i) = 1 when the i-th nearest has the query's class.
* NMI / AMI of a K-means clustering (as many clusters as classes) of the query embeddings.

Two protocols: ``leave_one_out`` (no reference set: every query is ranked against all the
other queries) and ``query_vs_reference`` (queries ranked against a separate reference set,
e.g. eval vs train). Queries whose class has no member in the reference set (other than
themselves) are left out of the retrieval metrics and counted in ``num_queries_skipped``.

Ranking is deterministic: equal distances are ordered by the smaller reference index.
Distances are computed in float32 as ``|q|^2 - 2 q.r + |r|^2`` (clamped at zero) by blocked
matrix products, so no query x reference matrix larger than one block is ever held.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from triplet_tfx.components import machine

# Elements of one (query block x reference block) distance tile. Each element costs ~12 bytes
# (float32 distance + int64 sort key) plus transient partition indices: ~100 MB per tile.
_TILE_ELEMENTS = 4 * 1024 * 1024
# Smallest reference block (one GEMM of a reference block should stay efficient).
_MIN_REFERENCE_BLOCK = 4096
# Reference blocks are at least this many times k wide (see _plan).
_REFERENCE_BLOCK_PER_K = 4
# Query blocks searched at once, one per thread (NumPy's partitions and products release the GIL);
# each holds one tile.
_MAX_THREADS = 4
_INDEX_BITS = 32
_INDEX_MASK = np.int64((1 << _INDEX_BITS) - 1)
_EXCLUDED_KEY = np.iinfo(np.int64).max

PROTOCOL_LEAVE_ONE_OUT = "leave_one_out"
PROTOCOL_QUERY_VS_REFERENCE = "query_vs_reference"

_Block = TypeVar("_Block")


# --------------------------------------------------------------------------------------------
# k-nearest neighbours
# --------------------------------------------------------------------------------------------


def _as_2d_float32(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {a.shape}")
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    return a


def _check_finite(a: np.ndarray, name: str, block: int = 1 << 20) -> None:
    for start in range(0, a.shape[0], max(1, block // max(1, a.shape[1]))):
        chunk = a[start : start + max(1, block // max(1, a.shape[1]))]
        if not np.isfinite(chunk).all():
            raise ValueError(f"{name} contains NaN or infinite values")


def _squared_norms(a: np.ndarray, block_rows: int = 65536) -> np.ndarray:
    out = np.empty(a.shape[0], dtype=np.float32)
    for s in range(0, a.shape[0], block_rows):
        c = np.asarray(a[s : s + block_rows], dtype=np.float32)
        out[s : s + block_rows] = np.einsum("ij,ij->i", c, c)
    return out


def _keys_to_result(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    indices = (keys & _INDEX_MASK).astype(np.int64)
    d2 = (keys >> _INDEX_BITS).astype(np.int32).view(np.float32)
    return indices, np.sqrt(d2)


def _d2_to_keys(d2: np.ndarray, ref_index: np.ndarray) -> np.ndarray:
    """Composite int64 keys: float32 bits of the squared distance << 32 | reference index.
    Non-negative float32 values sort like their bit patterns, so keys sort by (distance,
    index). Rounding negatives (and -0.0) are clamped to +0.0 first; d2 is modified."""
    np.maximum(d2, 0.0, out=d2)
    d2 += np.float32(0.0)
    keys = d2.view(np.int32).astype(np.int64)
    keys <<= _INDEX_BITS
    keys |= ref_index
    return keys


def _select_k(keys: np.ndarray, k: int) -> np.ndarray:
    """The k smallest keys of each row (unsorted). The keys carry their reference index, so they are
    partitioned themselves: no index array and gather as with an argpartition."""
    if keys.shape[1] <= k:
        return keys
    return np.partition(keys, k - 1, axis=1)[:, :k]


def _merge_candidates(best, d2, threshold, r0, k):
    """Merge the entries of d2 not above each row's threshold into best ([nq, k] keys)."""
    mask = d2 <= threshold[:, None]
    counts = mask.sum(axis=1)
    total = int(counts.sum())
    if total == 0:
        return best
    r_idx, c_idx = np.nonzero(mask)  # row-major: grouped by row
    keys = _d2_to_keys(d2[r_idx, c_idx], c_idx.astype(np.int64) + r0)
    starts = np.cumsum(counts) - counts
    pos = np.arange(total) - starts[r_idx]
    padded = np.full((best.shape[0], int(counts.max())), _EXCLUDED_KEY, dtype=np.int64)
    padded[r_idx, pos] = keys
    return _select_k(np.concatenate([best, padded], axis=1), k)


def _knn_keys(
    queries: np.ndarray,
    references: np.ndarray,
    ref_sq_norms: np.ndarray,
    k: int,
    self_index: Optional[np.ndarray],
    reference_block_size: int,
) -> np.ndarray:
    """Sorted composite keys (float32 bits of the squared distance << 32 | reference index)
    of the k nearest references of ``queries`` (one block). ``self_index[i]`` (or -1) is a
    reference index excluded for query i."""
    q = np.asarray(queries, dtype=np.float32)
    nq = q.shape[0]
    q_sq = np.einsum("ij,ij->i", q, q)[:, None]
    best = None  # [nq, <=k] int64 keys, unsorted
    n_ref = references.shape[0]
    rows = np.arange(nq)
    for r0 in range(0, n_ref, reference_block_size):
        r1 = min(n_ref, r0 + reference_block_size)
        rb = np.asarray(references[r0:r1], dtype=np.float32)
        d2 = q @ rb.T  # [nq, rb]
        d2 *= -2.0
        d2 += q_sq
        d2 += ref_sq_norms[None, r0:r1]
        hit = None
        if self_index is not None:
            local = self_index - r0
            hit = (local >= 0) & (local < (r1 - r0))
            if not hit.any():
                hit = None
        if best is not None and best.shape[1] == k:
            worst = best.max(axis=1)
            if (worst != _EXCLUDED_KEY).all():
                # Fast path: only entries not farther than the current k-th neighbour can
                # enter the top k (ties included: the key comparison settles them).
                if hit is not None:
                    d2[rows[hit], local[hit]] = np.inf
                threshold = (worst >> _INDEX_BITS).astype(np.int32).view(np.float32)
                best = _merge_candidates(best, d2, threshold, r0, k)
                continue
        keys = _d2_to_keys(d2, np.arange(r0, r1, dtype=np.int64)[None, :])
        if hit is not None:
            keys[rows[hit], local[hit]] = _EXCLUDED_KEY
        if best is not None:
            keys = np.concatenate([best, keys], axis=1)
        best = _select_k(keys, k)
    assert best is not None  # the callers check k <= the number of references, so there is one block
    best.sort(axis=1)
    return best


def _iter_query_chunks(n: int, chunk: int) -> Iterable[Tuple[int, int]]:
    for s in range(0, n, chunk):
        yield s, min(n, s + chunk)


def default_threads() -> int:
    """Threads of the nearest-neighbour search: this process's CPUs, at most _MAX_THREADS."""
    return max(1, min(_MAX_THREADS, machine.cpu_count()))


def _in_threads(search: Callable[..., _Block], blocks: List[tuple], threads: int) -> Iterator[_Block]:
    """search(*block) of each block, in the blocks' order, `threads` blocks at a time."""
    if threads <= 1 or len(blocks) <= 1:
        yield from (search(*block) for block in blocks)
        return
    # One BLAS thread per search thread: OpenBLAS's own threads on top of these oversubscribed the
    # cores (10,000 queries, leave-one-out, 2 CPUs: 1.19-1.44 s instead of 1.54-1.86 s).
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(min(threads, len(blocks))) as pool:
        yield from pool.map(lambda block: search(*block), blocks)


def _plan(n_queries: int, k: int) -> Tuple[int, int]:
    """(queries per block, references per block) so that a tile of candidates,
    queries x (k + references), holds about _TILE_ELEMENTS.

    Each reference block re-partitions the k neighbours kept so far with the block, so the
    selection work per query is about n_ref * (1 + k / reference_block): reference blocks are
    at least 4k wide (fewer queries per block when k is large, e.g. R for MAP@R)."""
    rbs_min = max(_MIN_REFERENCE_BLOCK, _REFERENCE_BLOCK_PER_K * k)
    sub = max(1, min(n_queries, _TILE_ELEMENTS // (k + rbs_min)))
    rbs = max(rbs_min, _TILE_ELEMENTS // sub - k)
    return sub, rbs


def nearest_neighbors(
    queries,
    references,
    k: int,
    exclude_self: bool = False,
    block_size: int = 1024,
    *,
    reference_block_size: Optional[int] = None,
    threads: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Exact k nearest references of each query by Euclidean distance.

    Args:
      queries: [Q, D] array (cast to float32).
      references: [R, D] array (cast to float32 block by block; a ``np.memmap`` works and is
        streamed).
      k: neighbours per query; 1 <= k <= R (R - 1 with ``exclude_self``).
      exclude_self: leave-one-out, the queries are the references (Q == R) and query i never
        gets reference i as a neighbour (duplicates of it elsewhere still count).
      block_size: most queries processed per block.
      reference_block_size: references per block. Default: blocks are chosen (queries per
        block possibly fewer than block_size) so that one tile, queries x (k + references),
        holds ~4M candidates (~100 MB of working memory). When given, tiles are
        block_size x (k + reference_block_size).
      threads: query blocks searched at once (0: `default_threads`); the results do not depend on it.

    Returns:
      (indices [Q, k] int64, distances [Q, k] float32), sorted by increasing distance; equal
      distances are ordered by the smaller reference index.
    """
    q = _as_2d_float32(queries, "queries")
    if not hasattr(references, "shape"):
        references = np.asarray(references, dtype=np.float32)
    if len(references.shape) != 2:
        raise ValueError(f"references must be 2-D [n, dim], got shape {references.shape}")
    n_ref, dim = references.shape
    if q.shape[1] != dim:
        raise ValueError(f"queries have dim {q.shape[1]}, references have dim {dim}")
    if n_ref >= (1 << 31):
        raise ValueError("at most 2**31 - 1 references are supported")
    k = int(k)
    available = n_ref - 1 if exclude_self else n_ref
    if exclude_self and q.shape[0] != n_ref:
        raise ValueError("exclude_self=True needs queries and references to be the same set")
    if not 1 <= k <= available:
        raise ValueError(f"k must be in [1, {available}], got {k}")
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    if reference_block_size:
        sub, rbs = block_size, int(reference_block_size)
    else:
        sub, rbs = _plan(block_size, k)
    ref_sq = _squared_norms(references)
    nq = q.shape[0]
    indices = np.empty((nq, k), dtype=np.int64)
    distances = np.empty((nq, k), dtype=np.float32)

    def search(q0: int, q1: int) -> None:
        self_index = np.arange(q0, q1, dtype=np.int64) if exclude_self else None
        keys = _knn_keys(q[q0:q1], references, ref_sq, k, self_index, rbs)
        indices[q0:q1], distances[q0:q1] = _keys_to_result(keys)

    for _ in _in_threads(search, list(_iter_query_chunks(nq, sub)), threads or default_threads()):
        pass
    return indices, distances


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _label_key(label) -> str:
    if isinstance(label, bytes):
        return label.decode("utf-8", "replace")
    if isinstance(label, (np.integer,)):
        return str(int(label))
    if isinstance(label, (np.floating, float)) and float(label).is_integer():
        return str(int(label))
    return str(label)


def _prepare(query_embeddings, query_labels, reference_embeddings, reference_labels):
    q = _as_2d_float32(query_embeddings, "query_embeddings")
    ql = np.asarray(query_labels).reshape(-1)
    if ql.shape[0] != q.shape[0]:
        raise ValueError("query_labels and query_embeddings differ in length")
    loo = reference_embeddings is None
    if loo:
        if reference_labels is not None:
            raise ValueError("reference_labels given without reference_embeddings")
        r, rl = q, ql
    else:
        if reference_labels is None:
            raise ValueError("reference_embeddings given without reference_labels")
        r = reference_embeddings
        if not hasattr(r, "shape"):
            r = np.asarray(r, dtype=np.float32)
        if len(r.shape) != 2:
            raise ValueError("reference_embeddings must be 2-D")
        rl = np.asarray(reference_labels).reshape(-1)
        if rl.shape[0] != r.shape[0]:
            raise ValueError("reference_labels and reference_embeddings differ in length")
        if r.shape[1] != q.shape[1]:
            raise ValueError("query and reference embeddings differ in dimension")
    _check_finite(q, "query_embeddings")
    if not loo:
        _check_finite(r, "reference_embeddings")
    classes, inv = np.unique(np.concatenate([ql, rl]), return_inverse=True)
    q_ids = inv[: ql.shape[0]].astype(np.int64)
    r_ids = inv[ql.shape[0] :].astype(np.int64)
    ref_counts = np.bincount(r_ids, minlength=len(classes)).astype(np.int64)
    r_per_query = ref_counts[q_ids] - (1 if loo else 0)
    return q, r, loo, classes, q_ids, r_ids, r_per_query


def correct_at_1(
    query_embeddings,
    query_labels,
    reference_embeddings=None,
    reference_labels=None,
    block_size: int = 1024,
) -> np.ndarray:
    """Per-query correctness of the nearest neighbour: bool [Q], True when the nearest
    reference (other than the query itself in leave-one-out) has the query's class.
    Queries with no possible match (their class has no other reference) are False; see
    ``evaluate_embeddings`` for the skipped count."""
    q, r, loo, _, q_ids, r_ids, r_per_query = _prepare(
        query_embeddings, query_labels, reference_embeddings, reference_labels
    )
    if r.shape[0] - (1 if loo else 0) < 1:
        return np.zeros(q.shape[0], dtype=bool)
    idx, _ = nearest_neighbors(q, r, 1, exclude_self=loo, block_size=block_size)
    return (r_ids[idx[:, 0]] == q_ids) & (r_per_query > 0)


def clustering_scores(embeddings, labels, seed: int = 0, n_init: int = 3) -> Tuple[float, float]:
    """(NMI, AMI) of the labels against a K-means clustering of the embeddings into as many clusters as
    classes (`evaluate_embeddings`' nmi and ami; scikit-learn's K-means runs outside Python's lock)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    embeddings = np.asarray(embeddings, np.float32)
    present = np.unique(labels)
    n_clusters = int(min(len(present), embeddings.shape[0]))
    if n_clusters < 2:
        # A single class: any clustering into one cluster agrees perfectly.
        return 1.0, 1.0
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    assigned = km.fit_predict(embeddings)
    nmi = normalized_mutual_info_score(labels, assigned)
    ami = adjusted_mutual_info_score(labels, assigned)
    return float(nmi), float(ami)


def evaluate_embeddings(
    query_embeddings,
    query_labels,
    reference_embeddings=None,
    reference_labels=None,
    ks: Sequence[int] = (1, 5, 10),
    seed: int = 0,
    *,
    max_r: Optional[int] = None,
    clustering: bool = True,
    kmeans_n_init: int = 3,
    block_size: int = 1024,
    return_per_query: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    neighbours: int = 0,
    threads: int = 0,
):
    """Retrieval and clustering metrics of embeddings (see module doc for the definitions).

    Args:
      query_embeddings, query_labels: [Q, D] and [Q].
      reference_embeddings, reference_labels: [R, D] and [R], or None for leave-one-out within
        the queries (default protocol).
      ks: the K of Recall@K (K larger than the reference set uses all references).
      seed: K-means seed (NMI/AMI).
      max_r: optional cap on R for R-Precision and MAP@R (as pytorch-metric-learning does when
        its ``k`` is an int: R becomes min(R, max_r)). Default: no cap; memory stays bounded
        anyway because queries are processed in blocks.
      clustering: compute nmi/ami (K-means); when False they are None.
      kmeans_n_init: K-means restarts.
      block_size: queries per block.
      return_per_query: also return a dict of per-query arrays: ``correct_at_1`` (bool [Q]),
        ``nearest_index`` (int64 [Q], -1 if no reference), ``nearest_distance`` (float32 [Q],
        Euclidean; inf if no reference), ``skipped`` (bool [Q]).
      progress: called with the number of queries of each block searched (for progress display).
      neighbours: with ``return_per_query``, also the indices of each query's nearest references
        (``neighbour_indices``, int64 [Q, min(neighbours, available references)], nearest first),
        from the same search as the metrics: what `nearest_neighbors` would return, without a
        second search.
      threads: query blocks searched at once (0: `default_threads`); the results do not depend on it.

    Returns:
      A JSON-serialisable dict (plain Python types) with keys: protocol, num_queries,
      num_references, num_classes, num_queries_skipped, precision_at_1, recall_at_<k> for
      each k, r_precision, map_at_r, max_r, nmi, ami, per_class_precision_at_1 ({str(label):
      value or None when all of that class's queries were skipped}). Retrieval metrics are None
      when every query is skipped. With ``return_per_query``: (metrics, per_query).
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("ks must be positive integers")
    if max_r is not None and max_r < 1:
        raise ValueError("max_r must be >= 1")
    q, r, loo, classes, q_ids, r_ids, r_per_query = _prepare(
        query_embeddings, query_labels, reference_embeddings, reference_labels
    )
    nq = q.shape[0]
    n_ref = r.shape[0]
    available = n_ref - 1 if loo else n_ref
    valid = r_per_query > 0
    r_eff = np.minimum(r_per_query, max_r) if max_r is not None else r_per_query.copy()

    hits_at_k = {k: np.zeros(nq, dtype=bool) for k in ks}
    r_prec = np.zeros(nq, dtype=np.float64)
    map_r = np.zeros(nq, dtype=np.float64)
    n_neighbours = min(int(neighbours), available) if return_per_query else 0
    neighbour_indices = np.empty((nq, max(n_neighbours, 0)), dtype=np.int64)
    nearest = np.full(nq, -1, dtype=np.int64)
    nearest_distance = np.full(nq, np.inf, dtype=np.float32)

    def search(a0: int, a1: int, k_need: int, rbs: int) -> int:
        """The metrics of queries a0..a1 from their k_need nearest references, into the arrays above."""
        self_index = np.arange(a0, a1, dtype=np.int64) if loo else None
        keys = _knn_keys(q[a0:a1], r, ref_sq, k_need, self_index, rbs)
        idx = keys & _INDEX_MASK
        nearest[a0:a1] = idx[:, 0]
        nearest_distance[a0:a1] = _keys_to_result(keys[:, 0])[1]
        neighbour_indices[a0:a1] = idx[:, :n_neighbours]
        same = r_ids[idx] == q_ids[a0:a1, None]  # [n, k_need]
        for k in ks:
            hits_at_k[k][a0:a1] = same[:, : min(k, k_need)].any(axis=1)
        rr = r_eff[a0:a1]
        rel = same & (np.arange(k_need)[None, :] < rr[:, None])
        cum = np.cumsum(rel, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            r_prec[a0:a1] = np.where(rr > 0, cum[:, -1] / np.maximum(rr, 1), 0.0)
            prec_i = cum / np.arange(1, k_need + 1, dtype=np.float64)[None, :]
            map_r[a0:a1] = np.where(rr > 0, (prec_i * rel).sum(axis=1) / np.maximum(rr, 1), 0.0)
        return a1 - a0

    if available >= 1 and valid.any():
        ref_sq = _squared_norms(r)
        k_recall = min(ks[-1], available)
        # Queries in chunks so that the [chunk, k] neighbour lists stay bounded; each chunk in blocks
        # of one tile (_plan), searched by `threads` threads.
        blocks = []
        for c0, c1 in _iter_query_chunks(nq, block_size):
            k_need = int(min(available, max(k_recall, n_neighbours, int(r_eff[c0:c1].max(initial=0)))))
            sub, rbs = _plan(c1 - c0, k_need)
            blocks += [(c0 + s0, c0 + s1, k_need, rbs) for s0, s1 in _iter_query_chunks(c1 - c0, sub)]
        for searched in _in_threads(search, blocks, threads or default_threads()):
            if progress is not None:
                progress(searched)

    correct1 = np.zeros(nq, dtype=bool)
    has = nearest >= 0
    correct1[has] = r_ids[nearest[has]] == q_ids[has]
    correct1 &= valid

    n_valid = int(valid.sum())

    def mean(x):
        return float(x[valid].mean()) if n_valid else None

    metrics: Dict[str, object] = {
        "protocol": PROTOCOL_LEAVE_ONE_OUT if loo else PROTOCOL_QUERY_VS_REFERENCE,
        "num_queries": int(nq),
        "num_references": int(n_ref),
        "num_classes": int(len(np.unique(q_ids))),
        "num_queries_skipped": int(nq - n_valid),
        "precision_at_1": mean(correct1),
    }
    for k in ks:
        metrics[f"recall_at_{k}"] = mean(hits_at_k[k])
    metrics["r_precision"] = mean(r_prec)
    metrics["map_at_r"] = mean(map_r)
    metrics["max_r"] = None if max_r is None else int(max_r)
    if clustering and nq >= 1:
        metrics["nmi"], metrics["ami"] = clustering_scores(q, q_ids, seed, kmeans_n_init)
    else:
        metrics["nmi"], metrics["ami"] = None, None
    per_class = {}
    for cid in np.unique(q_ids):
        m = (q_ids == cid) & valid
        per_class[_label_key(classes[cid])] = float(correct1[m].mean()) if m.any() else None
    metrics["per_class_precision_at_1"] = per_class
    if return_per_query:
        per_query = {
            "correct_at_1": correct1,
            "nearest_index": nearest,
            "nearest_distance": nearest_distance,
            "skipped": ~valid,
        }
        if n_neighbours > 0:
            if not (available >= 1 and valid.any()):  # the loop above did not search: no query has a relevant item
                neighbour_indices = nearest_neighbors(q, r, n_neighbours, exclude_self=loo, block_size=block_size)[0]
            per_query["neighbour_indices"] = neighbour_indices
        return metrics, per_query
    return metrics
