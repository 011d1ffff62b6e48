"""components.metrics against brute-force NumPy references (full distance matrix + argsort)."""

import json

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from triplet_tfx.components.evaluation import metrics as M

# ------------------------------------------------------------------ brute-force references


def brute_ranking(q, r, exclude_self):
    """Full ranking: indices sorted by (exact float64 distance, reference index)."""
    d = ((q[:, None, :].astype(np.float64) - r[None, :, :].astype(np.float64)) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    if exclude_self:
        order = order[:, :-1]  # self is last (inf)
    return order, np.sqrt(np.take_along_axis(d, order, axis=1))


def brute_metrics(q, ql, r=None, rl=None, ks=(1, 5, 10), max_r=None):
    loo = r is None
    if loo:
        r, rl = q, ql
    order, _ = brute_ranking(q, r, loo)
    out = {"p1": [], "r_prec": [], "map": [], "skipped": 0, "correct": []}
    recall = {k: [] for k in ks}
    per_class = {}
    for i in range(len(q)):
        ranked = rl[order[i]] == ql[i]
        R = int(ranked.sum())  # same-class references (self already excluded)
        if R == 0:
            out["skipped"] += 1
            out["correct"].append(False)
            continue
        Rc = R if max_r is None else min(R, max_r)
        out["p1"].append(float(ranked[0]))
        out["correct"].append(bool(ranked[0]))
        per_class.setdefault(ql[i], []).append(float(ranked[0]))
        for k in ks:
            recall[k].append(float(ranked[:k].any()))
        out["r_prec"].append(ranked[:Rc].sum() / Rc)
        # MAP@R: (1/R) * sum_{i<=R} P(i) * rel(i), written as a plain loop.
        s, hits = 0.0, 0
        for pos in range(Rc):
            if ranked[pos]:
                hits += 1
                s += hits / (pos + 1)
        out["map"].append(s / Rc)
    res = {
        "precision_at_1": np.mean(out["p1"]),
        "r_precision": np.mean(out["r_prec"]),
        "map_at_r": np.mean(out["map"]),
        "num_queries_skipped": out["skipped"],
        "correct": np.array(out["correct"]),
        "per_class": {str(c): np.mean(v) for c, v in per_class.items()},
    }
    for k in ks:
        res[f"recall_at_{k}"] = np.mean(recall[k])
    return res


def clustered(n, d, n_classes, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n)
    centers = rng.normal(size=(n_classes, d)) * 2.0
    x = centers[labels] + rng.normal(size=(n, d)) * spread
    return x.astype(np.float32), labels


# ------------------------------------------------------------------ nearest_neighbors


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("block_size,ref_block", [(1, 3), (4, 7), (16, 5), (1000, 100000)])
def test_nearest_neighbors_matches_brute_force(exclude_self, block_size, ref_block):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 5)).astype(np.float32)
    r = q if exclude_self else rng.normal(size=(53, 5)).astype(np.float32)
    k = 9
    idx, dist = M.nearest_neighbors(
        q, r, k, exclude_self=exclude_self, block_size=block_size, reference_block_size=ref_block
    )
    order, dref = brute_ranking(q, r, exclude_self)
    assert idx.dtype == np.int64 and dist.dtype == np.float32 and idx.shape == (37, k)
    np.testing.assert_array_equal(idx, order[:, :k])
    np.testing.assert_allclose(dist, dref[:, :k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_nearest_neighbors_ties_smaller_index_first(exclude_self):
    # Small integer coordinates: all distances are exact in float32, so ties are exact.
    rng = np.random.default_rng(1)
    r = rng.integers(0, 3, size=(60, 3)).astype(np.float32)
    q = r if exclude_self else rng.integers(0, 3, size=(25, 3)).astype(np.float32)
    k = 59 if exclude_self else 60  # full ranking: ties everywhere, across block borders
    idx, dist = M.nearest_neighbors(q, r, k, exclude_self=exclude_self, block_size=4, reference_block_size=7)
    order, dref = brute_ranking(q, r, exclude_self)
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(dist, dref, atol=1e-6)
    if exclude_self:
        assert not (idx == np.arange(60)[:, None]).any()


def test_nearest_neighbors_exclude_self_keeps_duplicates():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]], np.float32)
    idx, dist = M.nearest_neighbors(x, x, 1, exclude_self=True)
    np.testing.assert_array_equal(idx[:, 0], [1, 0, 0])
    np.testing.assert_array_equal(dist[:, 0], [0.0, 0.0, np.sqrt(50.0).astype(np.float32)])


def test_nearest_neighbors_memmap_references(tmp_path):
    rng = np.random.default_rng(2)
    r = rng.normal(size=(500, 8)).astype(np.float32)
    mm = np.lib.format.open_memmap(str(tmp_path / "r.npy"), mode="w+", dtype=np.float32, shape=r.shape)
    mm[:] = r
    mm.flush()
    q = rng.normal(size=(10, 8)).astype(np.float32)
    idx, _ = M.nearest_neighbors(q, np.load(str(tmp_path / "r.npy"), mmap_mode="r"), 5, reference_block_size=64)
    np.testing.assert_array_equal(idx, brute_ranking(q, r, False)[0][:, :5])


def test_nearest_neighbors_validates():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError):
        M.nearest_neighbors(x, x, 4, exclude_self=True)  # only 3 others
    with pytest.raises(ValueError):
        M.nearest_neighbors(x, x, 0)
    with pytest.raises(ValueError):
        M.nearest_neighbors(x, np.zeros((4, 3)), 1)
    with pytest.raises(ValueError):
        M.nearest_neighbors(x[:3], x, 1, exclude_self=True)


# ------------------------------------------------------------------ evaluate_embeddings


def _force_small_blocks(monkeypatch, tile):
    """Shrink the tiles so that queries and references are both split into many blocks, and
    record the block shapes seen by the k-NN kernel."""
    monkeypatch.setattr(M, "_TILE_ELEMENTS", tile)
    monkeypatch.setattr(M, "_MIN_REFERENCE_BLOCK", 8)
    monkeypatch.setattr(M, "_REFERENCE_BLOCK_PER_K", 0)
    seen = []
    real = M._knn_keys

    def spy(queries, references, ref_sq_norms, k, self_index, reference_block_size):
        seen.append((len(queries), len(references), reference_block_size))
        return real(queries, references, ref_sq_norms, k, self_index, reference_block_size)

    monkeypatch.setattr(M, "_knn_keys", spy)
    return seen


def _assert_blocked(seen):
    assert len(seen) > 3  # several query blocks
    assert all(rbs < n_ref for _, n_ref, rbs in seen)  # several reference blocks each


def _check_against_brute(m, ref, ks):
    for key in ["precision_at_1", "r_precision", "map_at_r"] + [f"recall_at_{k}" for k in ks]:
        assert m[key] == pytest.approx(ref[key], abs=1e-12), key
    assert m["num_queries_skipped"] == ref["num_queries_skipped"]
    assert m["per_class_precision_at_1"].keys() >= ref["per_class"].keys()
    for c, v in ref["per_class"].items():
        assert m["per_class_precision_at_1"][c] == pytest.approx(v)


@pytest.mark.parametrize("max_r", [None, 3])
def test_leave_one_out_matches_brute_force(max_r, monkeypatch):
    x, y = clustered(150, 6, 5, seed=3, spread=2.0)
    # Singleton classes (no other member -> skipped) and a pair of duplicates.
    y[0], y[1] = 100, 101
    x[5] = x[6]
    seen = _force_small_blocks(monkeypatch, 300)
    ks = (1, 2, 5, 10)
    m, per_query = M.evaluate_embeddings(x, y, ks=ks, max_r=max_r, block_size=7, return_per_query=True)
    _assert_blocked(seen)
    ref = brute_metrics(x, y, ks=ks, max_r=max_r)
    _check_against_brute(m, ref, ks)
    assert m["protocol"] == "leave_one_out"
    assert m["num_queries"] == 150 and m["num_references"] == 150
    assert m["num_queries_skipped"] == 2
    assert m["per_class_precision_at_1"]["100"] is None
    assert m["precision_at_1"] == m["recall_at_1"]
    np.testing.assert_array_equal(per_query["correct_at_1"], ref["correct"])
    np.testing.assert_array_equal(per_query["skipped"], np.isin(np.arange(150), [0, 1]))
    np.testing.assert_array_equal(M.correct_at_1(x, y), ref["correct"])
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize("max_r", [None, 4])
def test_query_vs_reference_matches_brute_force(max_r, monkeypatch):
    xq, yq = clustered(70, 4, 4, seed=4, spread=2.5)
    xr, yr = clustered(230, 4, 4, seed=4, spread=2.5)
    yq[:3] = 9  # class absent from the references -> skipped
    xr[10:14] = xq[20]  # ties: several references equidistant from a query
    seen = _force_small_blocks(monkeypatch, 1500)
    ks = (1, 3, 500)  # 500 > number of references: all of them
    m = M.evaluate_embeddings(xq, yq, xr, yr, ks=ks, max_r=max_r, block_size=5)
    _assert_blocked([s for s in seen if s[1] == 230])
    ref = brute_metrics(xq, yq, xr, yr, ks=ks, max_r=max_r)
    _check_against_brute(m, ref, ks)
    assert m["protocol"] == "query_vs_reference"
    assert m["num_queries_skipped"] == 3 and m["num_references"] == 230
    np.testing.assert_array_equal(M.correct_at_1(xq, yq, xr, yr), ref["correct"])
    json.dumps(m, allow_nan=False)


def test_exact_ties_in_metrics():
    # Integer embeddings with many exact duplicates: the ranking (and hence every metric)
    # depends on the tie-break rule (smaller reference index first).
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, size=(80, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=80)
    ks = (1, 4)
    _check_against_brute(M.evaluate_embeddings(x, y, ks=ks), brute_metrics(x, y, ks=ks), ks)
    xr = rng.integers(0, 2, size=(50, 3)).astype(np.float32)
    yr = rng.integers(0, 3, size=50)
    _check_against_brute(M.evaluate_embeddings(x, y, xr, yr, ks=ks), brute_metrics(x, y, xr, yr, ks=ks), ks)


def test_hand_computed_map_at_r():
    # Query 0 (class a) against references ranked by distance: a, b, a, a  (R = 3)
    # MAP@R = (1/3) * (1/1 + 2/3 + 0) ; the third 'a' is at rank 4 > R, so it does not count.
    q = np.array([[0.0]], np.float32)
    r = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    m = M.evaluate_embeddings(q, ["a"], r, ["a", "b", "a", "a"], ks=(1, 2), clustering=False)
    assert m["map_at_r"] == pytest.approx((1 + 2 / 3) / 3)
    assert m["r_precision"] == pytest.approx(2 / 3)
    assert m["precision_at_1"] == 1.0 and m["recall_at_2"] == 1.0
    assert m["per_class_precision_at_1"] == {"a": 1.0}
    assert m["nmi"] is None


def test_nmi_ami_match_sklearn():
    x, y = clustered(120, 5, 4, seed=6)
    m = M.evaluate_embeddings(x, y, seed=3)
    assigned = KMeans(n_clusters=4, n_init=3, random_state=3).fit_predict(x)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(y, assigned))
    assert m["ami"] == pytest.approx(adjusted_mutual_info_score(y, assigned))
    assert m["num_classes"] == 4
    assert m["nmi"] > 0.5  # well separated clusters
    # On its own (the evaluator runs it beside its pictures), with the labels as given: the same scores.
    names = np.array(["class " + "abcd"[label] for label in y])
    assert M.clustering_scores(x, names, seed=3) == pytest.approx((m["nmi"], m["ami"]))


def test_perfect_and_all_skipped():
    x = np.array([[0.0, 0], [0, 0.1], [5, 5], [5, 5.1]], np.float32)
    y = np.array([0, 0, 1, 1])
    m = M.evaluate_embeddings(x, y, ks=(1, 3))
    for key in ("precision_at_1", "recall_at_1", "recall_at_3", "r_precision", "map_at_r"):
        assert m[key] == 1.0
    assert m["nmi"] == pytest.approx(1.0) and m["ami"] == pytest.approx(1.0)
    m = M.evaluate_embeddings(x[:2], [0, 1], clustering=False)
    assert m["num_queries_skipped"] == 2 and m["precision_at_1"] is None
    json.dumps(m, allow_nan=False)


def test_nearest_neighbors_default_plan_splits_blocks(monkeypatch):
    # Default block planning (no reference_block_size) with tiny tiles: several blocks in both
    # dimensions, reference blocks >= 4k wide.
    monkeypatch.setattr(M, "_TILE_ELEMENTS", 200)
    monkeypatch.setattr(M, "_MIN_REFERENCE_BLOCK", 8)
    seen = []
    real = M._knn_keys
    monkeypatch.setattr(M, "_knn_keys", lambda *a: seen.append((len(a[0]), a[5])) or real(*a))
    rng = np.random.default_rng(7)
    q = rng.normal(size=(37, 5)).astype(np.float32)
    r = rng.normal(size=(53, 5)).astype(np.float32)
    for exclude_self, qq in ((False, q), (True, r)):
        seen.clear()
        idx, _ = M.nearest_neighbors(qq, r, 9, exclude_self=exclude_self, block_size=16)
        np.testing.assert_array_equal(idx, brute_ranking(qq, r, exclude_self)[0][:, :9])
        assert len(seen) > 3 and all(n <= 16 and 36 <= rbs < len(r) for n, rbs in seen)


@pytest.mark.parametrize("loo", [True, False])
def test_neighbour_indices_are_the_brute_force_ranking(loo):
    # The gallery's neighbours come from the metrics' own search: the first k of the exact ranking.
    xq, yq = clustered(90, 5, 4, seed=8, spread=2.0)
    xr, yr = (None, None) if loo else clustered(140, 5, 4, seed=9, spread=2.0)
    _, per_query = M.evaluate_embeddings(xq, yq, xr, yr, block_size=16, return_per_query=True, neighbours=6)
    order, _ = brute_ranking(xq, xq if loo else xr, loo)
    np.testing.assert_array_equal(per_query["neighbour_indices"], order[:, :6])
    np.testing.assert_array_equal(per_query["neighbour_indices"][:, 0], per_query["nearest_index"])


def test_neighbour_indices_when_no_query_has_a_relevant_reference():
    # Every query's class is absent from the references: no metrics search, neighbours all the same.
    xq, _ = clustered(12, 3, 4, seed=5)
    xr, _ = clustered(20, 3, 4, seed=6)
    yq, yr = np.full(12, 7), np.zeros(20, np.int64)
    m, per_query = M.evaluate_embeddings(xq, yq, xr, yr, return_per_query=True, neighbours=25, clustering=False)
    assert m["num_queries_skipped"] == 12
    np.testing.assert_array_equal(per_query["neighbour_indices"], brute_ranking(xq, xr, False)[0])
    assert "neighbour_indices" not in M.evaluate_embeddings(xq, yq, xr, yr, return_per_query=True, clustering=False)[1]


@pytest.mark.parametrize("threads", [1, 3])
def test_blocks_searched_in_threads_give_the_brute_force_results(threads, monkeypatch):
    # Many small blocks, searched one at a time or three at once: the same exact ranking and metrics.
    x, y = clustered(120, 5, 4, seed=11, spread=2.0)
    seen = _force_small_blocks(monkeypatch, 300)
    searched = []
    m, per_query = M.evaluate_embeddings(
        x, y, ks=(1, 5), block_size=9, return_per_query=True, neighbours=4, threads=threads, progress=searched.append
    )
    _assert_blocked(seen)
    _check_against_brute(m, brute_metrics(x, y, ks=(1, 5)), (1, 5))
    order, _ = brute_ranking(x, x, True)
    np.testing.assert_array_equal(per_query["neighbour_indices"], order[:, :4])
    assert sum(searched) == 120 and len(searched) > 3
    idx, _ = M.nearest_neighbors(x, x, 7, exclude_self=True, block_size=5, threads=threads)
    np.testing.assert_array_equal(idx, order[:, :7])


def test_search_threads_keep_blas_to_one_thread_each(monkeypatch):
    """OpenBLAS's threads on top of the search threads would oversubscribe the cores."""
    import threadpoolctl

    blas_threads = []
    knn_keys = M._knn_keys

    def recording(*args, **kwargs):
        blas_threads.append({p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"})
        return knn_keys(*args, **kwargs)

    monkeypatch.setattr(M, "_knn_keys", recording)
    x, y = clustered(60, 4, 3, seed=2, spread=2.0)
    M.evaluate_embeddings(x, y, block_size=7, threads=2, clustering=False)
    assert len(blas_threads) > 1 and all(threads == {1} for threads in blas_threads)
