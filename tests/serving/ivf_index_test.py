"""The IVF index (components/ivf_index.py) against brute-force NumPy k-NN: recall, exactness
when every list is probed, int8 round-trip errors, tie order, argument checks, incremental
additions and the SavedModel round trip."""

import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components import ivf_index as ivf

N, D, CLUSTERS, K = 20_000, 64, 100, 10
RECALL_NPROBE = 8  # of default_lists(20k) = 512 lists: recall@10 >= 0.95 (measured: ~0.99 float32, ~0.97 int8)


def clustered(n, d, clusters, seed, spread=0.5):
    """Unit-norm points around `clusters` random unit centres (Gaussian noise of norm ~spread)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(clusters, size=n)
    x = centres[labels] + rng.normal(size=(n, d)) * spread / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels.astype(np.int64)


def exact_knn(queries, references, k):
    """(indices, distances) by NumPy in float64; equal distances -> the lower index (stable sort)."""
    q, r = queries.astype(np.float64), references.astype(np.float64)
    squared = np.maximum((q * q).sum(1)[:, None] - 2 * q @ r.T + (r * r).sum(1)[None, :], 0.0)
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return order, np.sqrt(np.take_along_axis(squared, order, axis=1))


def recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


@pytest.fixture(scope="module")
def data():
    x, labels = clustered(N, D, CLUSTERS, seed=0)
    # queries: 300 indexed items, perturbed (noise of norm 0.05) and re-normalised
    rng = np.random.default_rng(1)
    queries = x[rng.choice(N, 300, replace=False)] + rng.normal(size=(300, D)).astype(np.float32) * 0.05 / np.sqrt(D)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    ids = np.array([f"item/{i}" for i in range(N)], dtype=object)
    lists = ivf.default_lists(N)
    centroids = ivf.train_quantizer(x, lists, iterations=10, seed=0)
    return x, labels, ids, queries, centroids


def stored_truth(state, queries, k=K):
    return exact_knn(queries, state.float32(), k)


def test_defaults_and_auto_mode():
    assert ivf.default_lists(20_000) == 512
    assert ivf.default_lists(60_000) == 1024
    assert ivf.default_lists(1_000_000) == 4096
    assert ivf.default_lists(10) == 1 and ivf.default_lists(100) == 4
    assert ivf.default_nprobe(4096) == 32 and ivf.default_nprobe(2) == 2
    assert ivf.choose_index(60_000) == "exact"
    assert ivf.choose_index(199_999) == "exact"
    assert ivf.choose_index(1_000_000) == "ivf"
    assert ivf.rerank_count(10) == 64 and ivf.rerank_count(100) == 400


def test_quantizer_is_seeded_and_assign_is_nearest(data):
    x, *_ = data
    a = ivf.train_quantizer(x[:3000], 32, iterations=5, seed=3)
    b = ivf.train_quantizer(x[:3000], 32, iterations=5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (32, D) and a.dtype == np.float32
    nearest = exact_knn(x[:500], a, 1)[0][:, 0]
    np.testing.assert_array_equal(ivf.assign(x[:500], a), nearest)
    assert ivf.train_quantizer(x[:3000], 32, iterations=2, seed=3, init="random").shape == (32, D)


@pytest.mark.parametrize(
    "storage,scale,keep",
    [("float32", "vector", False), ("int8", "vector", False), ("int8", "dimension", False), ("int8", "vector", True)],
)
def test_recall_at_10_against_exact_search(data, storage, scale, keep):
    x, labels, ids, queries, centroids = data
    state = ivf.build(x, ids, labels, centroids, storage=storage, scale=scale, keep_float32=keep)
    indices, distances = ivf.IvfIndex(state).search(queries, K, RECALL_NPROBE)
    truth, _ = exact_knn(queries, x, K)
    # compare ids: the index answers positions in its stored (list-grouped) order
    found = np.array([[int(i.split("/")[1]) for i in row] for row in state.ids[indices.numpy()]])
    assert recall(found, truth) >= 0.95
    assert np.all(np.diff(distances.numpy(), axis=1) >= 0)


@pytest.mark.parametrize("storage,keep", [("float32", False), ("int8", True)])
def test_probing_every_list_gives_the_exact_result(data, storage, keep):
    x, labels, ids, queries, centroids = data
    state = ivf.build(x, ids, labels, centroids, storage=storage, keep_float32=keep)
    indices, distances = ivf.IvfIndex(state).search(queries[:50], K, state.lists)
    truth, truth_distances = stored_truth(state, queries[:50])
    np.testing.assert_array_equal(indices.numpy(), truth)
    np.testing.assert_allclose(distances.numpy(), truth_distances, atol=2e-4)


@pytest.mark.parametrize("scale", ["vector", "dimension"])
def test_int8_round_trip_error_is_bounded(data, scale):
    x, *_ = data
    codes, scales, clipped = ivf.quantize(x, scale)
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= 127 and clipped == 0.0
    restored = ivf.dequantize(codes, scales, scale)
    step = scales[:, None] if scale == "vector" else scales[None, :]
    assert np.all(np.abs(restored - x) <= step / 2 + 1e-7)  # half a quantisation step
    peak = np.abs(x).max(axis=1 if scale == "vector" else 0)
    np.testing.assert_allclose(scales, peak / 127, rtol=1e-6)
    assert np.linalg.norm(restored - x, axis=1).max() < 0.02  # unit vectors: < 2 % of their norm


@pytest.mark.parametrize("scale", ["vector", "dimension"])
def test_int8_distances_are_the_distances_to_the_dequantised_vectors(data, scale):
    x, labels, ids, queries, centroids = data
    state = ivf.build(x, ids, labels, centroids, storage="int8", scale=scale)
    indices, distances = ivf.IvfIndex(state).search(queries[:20], K, 16)
    indices, distances = indices.numpy(), distances.numpy()
    restored = state.float32()  # dequantised codes, stored order
    to_restored = np.linalg.norm(restored[indices] - queries[:20, None, :], axis=2)
    np.testing.assert_allclose(distances, to_restored, atol=2e-3)
    originals = x[[[int(i.split("/")[1]) for i in row] for row in state.ids[indices]]]
    to_originals = np.linalg.norm(originals - queries[:20, None, :], axis=2)
    np.testing.assert_allclose(distances, to_originals, atol=0.01)


@pytest.mark.parametrize("storage,keep", [("float32", False), ("int8", False), ("int8", True)])
def test_equal_distances_are_ordered_by_the_smaller_stored_index(storage, keep):
    base, _ = clustered(400, 16, 8, seed=5)
    x = np.concatenate([base, base, base[:100]])  # every vector two or three times
    ids = [f"i{i}" for i in range(len(x))]
    centroids = ivf.train_quantizer(base, 8, iterations=5, seed=0)
    state = ivf.build(x, ids, np.zeros(len(x), np.int64), centroids, storage=storage, keep_float32=keep)
    queries = base[:40]
    for nprobe in (1, 3, 8):
        indices, distances = ivf.IvfIndex(state).search(queries, 7, nprobe)
        indices, distances = indices.numpy(), distances.numpy()
        for row, dist in zip(indices, distances):
            for a in range(len(row) - 1):
                if dist[a] == dist[a + 1]:
                    assert row[a] < row[a + 1]
    if storage == "float32" or keep:
        truth, _ = stored_truth(state, queries, 7)
        np.testing.assert_array_equal(ivf.IvfIndex(state).search(queries, 7, 8)[0].numpy(), truth)


@pytest.mark.parametrize(
    "k,nprobe,message",
    [
        (0, 1, "k must be at least 1"),
        (301, 1, "k must be at most the index size"),
        (1, 0, "nprobe must be at least 1"),
        (1, 9, "nprobe must be at most the number of lists"),
    ],
)
def test_argument_checks(k, nprobe, message):
    x, labels = clustered(300, 8, 4, seed=2)
    state = ivf.build(x, [str(i) for i in range(300)], labels, ivf.train_quantizer(x, 8, seed=0))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ivf.IvfIndex(state).search(x[:2], k, nprobe)


def test_small_lists_are_probed_until_k_items():
    x, labels = clustered(300, 8, 4, seed=2)
    state = ivf.build(x, [str(i) for i in range(300)], labels, ivf.train_quantizer(x, 64, seed=0), storage="float32")
    assert state.lengths.min() < 50
    indices, distances = ivf.IvfIndex(state).search(x[:5], 50, 1)
    assert indices.shape == (5, 50) and np.all(indices.numpy() < 300) and np.all(np.isfinite(distances.numpy()))
    assert len(set(indices.numpy()[0])) == 50


def test_build_validates_its_input(data):
    x, labels, ids, _, centroids = data
    with pytest.raises(ValueError, match="ids"):
        ivf.build(x[:10], ids[:9], labels[:10], centroids)
    with pytest.raises(ValueError, match="storage"):
        ivf.build(x[:10], ids[:10], labels[:10], centroids, storage="int4")
    with pytest.raises(ValueError, match="dimensions"):
        ivf.build(x[:10, :8], ids[:10], labels[:10], centroids)


@pytest.mark.parametrize("storage,scale", [("float32", "vector"), ("int8", "vector"), ("int8", "dimension")])
def test_items_added_later_are_found(data, storage, scale):
    x, labels, ids, _, centroids = data
    first = ivf.build(x[:15_000], ids[:15_000], labels[:15_000], centroids, storage=storage, scale=scale)
    state = ivf.add(first, x[15_000:], ids[15_000:], labels[15_000:])
    assert state.size == N and state.lists == first.lists
    np.testing.assert_array_equal(state.centroids, first.centroids)  # no re-clustering
    np.testing.assert_array_equal(state.lengths, np.bincount(ivf.assign(x, centroids), minlength=state.lists))
    assert np.all(np.diff(state.list_ids) >= 0) and np.array_equal(state.offsets[1:], np.cumsum(state.lengths)[:-1])
    sample = np.arange(15_000, N, 97)
    indices, distances = ivf.IvfIndex(state).search(x[sample], 1, 1)
    found = state.ids[indices.numpy()[:, 0]]
    np.testing.assert_array_equal(found, ids[sample])  # each finds itself
    np.testing.assert_array_equal(state.labels[indices.numpy()[:, 0]], labels[sample])
    assert distances.numpy().max() < 0.02
    # the same as building everything at once (same lists, same within-list order)
    whole = ivf.build(x, ids, labels, centroids, storage=storage, scale=scale)
    np.testing.assert_array_equal(state.ids, whole.ids)
    if scale == "vector":  # (per-dimension scales: the whole build's differ from the first part's)
        np.testing.assert_array_equal(state.vectors, whole.vectors)
    assert ivf.rebuild_reasons(state) == []
    assert any("grew" in r for r in ivf.rebuild_reasons(ivf.add(first, x, ids, labels)))
    assert any("recall" in r for r in ivf.rebuild_reasons(state, recall_at_10=0.9))


def test_rebuild_is_advised_for_unbalanced_lists_and_clipped_codes(data):
    x, labels, ids, _, centroids = data
    state = ivf.build(x[:2000], ids[:2000], labels[:2000], centroids[:16], storage="int8", scale="dimension")
    crowded = ivf.add(state, np.repeat(x[:1], 20_000, axis=0) * 1.0, ids[:1].repeat(20_000), labels[:1].repeat(20_000))
    assert any("unbalanced" in r for r in ivf.rebuild_reasons(crowded))
    louder = ivf.add(state, x[2000:3000] * 3.0, ids[2000:3000], labels[2000:3000])
    assert louder.clipped_fraction > 0 and any("clipped" in r for r in ivf.rebuild_reasons(louder))


def test_memory_bytes(data):
    x, labels, ids, _, centroids = data
    f32 = ivf.build(x, ids, labels, centroids, storage="float32")
    i8 = ivf.build(x, ids, labels, centroids, storage="int8")
    both = ivf.build(x, ids, labels, centroids, storage="int8", keep_float32=True)
    assert ivf.memory_bytes(f32) >= N * D * 4 and ivf.memory_bytes(i8) < ivf.memory_bytes(f32) / 2
    assert ivf.memory_bytes(both) == ivf.memory_bytes(i8) + N * D * 4


@pytest.mark.parametrize(
    "storage,scale,keep", [("float32", "vector", False), ("int8", "dimension", False), ("int8", "vector", True)]
)
def test_saved_model_round_trip(data, tmp_path, storage, scale, keep):
    x, labels, ids, queries, centroids = data
    state = ivf.build(
        x[:5000], ids[:5000], labels[:5000], centroids[:64], storage=storage, scale=scale, keep_float32=keep
    )
    module = ivf.IvfIndex(state)
    before = module.search(queries[:20], K, 4)
    tf.saved_model.save(module, str(tmp_path), signatures={"ivf_search": module.search})
    loaded = tf.saved_model.load(str(tmp_path))
    after = loaded.search(queries[:20], tf.constant(K), tf.constant(4))
    signature = loaded.signatures["ivf_search"](
        queries=tf.constant(queries[:20]), k=tf.constant(K), nprobe=tf.constant(4)
    )
    for answer in (after, (signature["output_0"], signature["output_1"])):
        np.testing.assert_array_equal(answer[0].numpy(), before[0].numpy())
        np.testing.assert_array_equal(answer[1].numpy(), before[1].numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="nprobe must be at most"):
        loaded.search(queries[:1], tf.constant(K), tf.constant(65))
    restored = ivf.state_of(loaded)
    for field in ("centroids", "offsets", "lengths", "list_ids", "vectors", "squared_norms", "ids", "labels"):
        np.testing.assert_array_equal(getattr(restored, field), getattr(state, field))
    assert (restored.storage, restored.scale) == (storage, scale)
    assert (restored.float_vectors is None) == (not keep)


def test_recall_is_the_share_of_exact_neighbours_found():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert ivf.recall(exact[:, ::-1], exact) == 1.0  # order within the k does not matter
    assert ivf.recall(np.array([[1, 2, 9, 9], [5, 0, 0, 0]]), exact) == pytest.approx((2 / 4 + 1 / 4) / 2)
    with pytest.raises(ValueError, match="one shape"):
        ivf.recall(exact[:, :3], exact)


def test_build_for_trains_the_default_lists_on_a_sample():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    state = ivf.build_for(x, [str(i) for i in range(3000)], np.zeros(3000, np.int64), storage="float32")
    assert state.lists == ivf.default_lists(3000) == 128 and state.size == 3000 and state.lengths.sum() == 3000
    again = ivf.build_for(x, [str(i) for i in range(3000)], np.zeros(3000, np.int64), storage="float32")
    np.testing.assert_array_equal(state.centroids, again.centroids)  # seeded
    with pytest.raises(ValueError, match=r"lists must be in \[1, 3000\]"):
        ivf.build_for(x, [str(i) for i in range(3000)], np.zeros(3000, np.int64), lists=3001)


@pytest.mark.parametrize("storage,scale", [("float32", "vector"), ("int8", "vector"), ("int8", "dimension")])
def test_state_of_reads_back_what_a_saved_index_holds(data, tmp_path, storage, scale):
    x, labels, ids, _, centroids = data
    state = ivf.build(x[:3000], ids[:3000], labels[:3000], centroids, storage=storage, scale=scale)
    tf.saved_model.save(ivf.IvfIndex(state), str(tmp_path))
    restored = ivf.state_of(tf.saved_model.load(str(tmp_path)))
    for field in ("centroids", "offsets", "lengths", "list_ids", "vectors", "squared_norms", "ids", "labels"):
        np.testing.assert_array_equal(getattr(restored, field), getattr(state, field), err_msg=field)
    assert (restored.storage, restored.scale, restored.trained_size) == (storage, scale, state.trained_size)
    if storage == "int8":
        np.testing.assert_array_equal(restored.scales, state.scales)
    # What `add` makes of the restored state is what it makes of the original.
    np.testing.assert_array_equal(
        ivf.add(restored, x[3000:3500], ids[3000:3500], labels[3000:3500]).vectors,
        ivf.add(state, x[3000:3500], ids[3000:3500], labels[3000:3500]).vectors,
    )
