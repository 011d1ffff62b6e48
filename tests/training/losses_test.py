"""Tests of components/training/losses/: parity with TensorFlow Addons, properties, gradients, Keras.

- Golden parity: values and gradients recorded with TFA 0.23.0 (tests/golden/, see its README.md).
- Property tests (hypothesis) against a NumPy loop written from the definition.
- Gradients: against TFA's own (O(B^3), tiled) algorithm re-typed here in TensorFlow, including
  tied distances, and against finite differences of the NumPy reference in float64.
- Keras 3: config round trip, compile/fit (XLA) and .keras save/load.
- Global-batch mining under MirroredStrategy with two logical CPUs, in a fresh subprocess.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings, strategies as st

from triplet_tfx.components.training import losses as L

# The reference values are part of the repository (tests/golden/README.md): a missing file is a
# failure, never a skip.
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
_JSON = GOLDEN / "tfa_triplet_golden.json"
_NPZ = GOLDEN / "tfa_triplet_golden.npz"
_MISSING = [str(p) for p in (_JSON, _NPZ) if not p.is_file()]
CASES = [] if _MISSING else json.loads(_JSON.read_text())["cases"]


def _require_golden():
    if _MISSING:
        pytest.fail(f"golden files missing: {', '.join(_MISSING)} (see tests/golden/README.md)", pytrace=False)


def test_golden_files_present():
    _require_golden()
    assert len(CASES) == 86, f"{_JSON}: expected 86 cases, found {len(CASES)}"


@pytest.fixture(scope="module")
def golden_arrays():
    _require_golden()
    with np.load(_NPZ) as z:
        return {k: z[k] for k in z.files}


def _loss_fn(case):
    return L.triplet_semihard_loss if case["loss"] == "semihard" else L.triplet_hard_loss


def _value_and_grad(fn, labels, embeddings, **kwargs):
    e = tf.convert_to_tensor(embeddings)
    with tf.GradientTape() as tape:
        tape.watch(e)
        value = fn(labels, e, **kwargs)
    return value.numpy(), tape.gradient(value, e).numpy()


def _degenerate(labels):
    labels = np.asarray(labels).ravel()
    _, counts = np.unique(labels, return_counts=True)
    return len(counts) < 2 or counts.max() < 2


# --------------------------------------------------------------------------- golden parity
@pytest.mark.parametrize("case", CASES or [None], ids=[f"{c['index']}-{c['name']}" for c in CASES] or ["missing"])
def test_golden_parity(case, golden_arrays):
    i = case["index"]
    labels = golden_arrays[f"labels_{i}"]
    embeddings = golden_arrays[f"embeddings_{i}"]
    value, grad = _value_and_grad(_loss_fn(case), labels, embeddings, **case["kwargs"])
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    if _degenerate(labels):
        # Our documented deviation: one class (TFA: meaningless finite value) or all labels
        # distinct (TFA: NaN) -> 0 with a zero gradient.
        assert case["name"] in ("edge_one_class", "edge_all_distinct")
        assert value == 0.0
        np.testing.assert_array_equal(grad, np.zeros_like(grad))
        return
    assert math.isfinite(case["value"])
    np.testing.assert_allclose(value, case["value"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, golden_arrays[f"grad_{i}"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("impl", ["tf", pytest.param("xla", marks=pytest.mark.slow), "numpy"])
def test_golden_parity_each_code_path(impl, golden_arrays, monkeypatch):
    """tf.sort (XLA - Keras' default -, GPU, small batches) and NumPy (CPU, larger batches)."""
    monkeypatch.setattr(L.sorting, "SORT_IMPL", "numpy" if impl == "numpy" else "tf")
    cases = [c for c in CASES if c["name"] not in ("edge_one_class", "edge_all_distinct")]
    cases = cases[::12] if impl == "xla" else cases
    for case in cases:
        i = case["index"]
        fn = _loss_fn(case)
        kwargs = case["kwargs"]

        def step(labels, e):
            with tf.GradientTape() as tape:
                tape.watch(e)
                value = fn(labels, e, **kwargs)  # noqa: B023  (called in this iteration only)
            return value, tape.gradient(value, e)

        if impl == "xla":
            step = tf.function(step, jit_compile=True)
        value, grad = step(tf.constant(golden_arrays[f"labels_{i}"]), tf.constant(golden_arrays[f"embeddings_{i}"]))
        np.testing.assert_allclose(value.numpy(), case["value"], rtol=1e-5, atol=1e-6, err_msg=case["name"])
        np.testing.assert_allclose(grad.numpy(), golden_arrays[f"grad_{i}"], atol=1e-4, err_msg=case["name"])


# --------------------------------------------------------------------------- references
def np_distances(x, metric):
    x = np.asarray(x, np.float64)
    if metric == "angular":
        n = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
        d = np.maximum(1.0 - n @ n.T, 0.0)
    else:
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        if metric == "L2":
            d = np.sqrt(d)
    np.fill_diagonal(d, 0.0)
    return d


def np_semihard(labels, d, margin):
    """The semi-hard loss from its definition, one anchor-positive pair at a time."""
    labels = np.asarray(labels).ravel()
    b = len(labels)
    total, count = 0.0, 0
    for a in range(b):
        negatives = [d[a, n] for n in range(b) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(b):
            if p == a or labels[p] != labels[a]:
                continue
            count += 1
            farther = [v for v in negatives if v > d[a, p]]
            d_an = min(farther) if farther else max(negatives)
            total += max(margin + d[a, p] - d_an, 0.0)
    return total / count if count else 0.0


def np_hard(labels, d, margin, soft=False):
    """The batch-hard loss from its definition (TFA: hardest_pos = 0 for an anchor without one)."""
    labels = np.asarray(labels).ravel()
    b = len(labels)
    if _degenerate(labels):
        return 0.0
    out = []
    for a in range(b):
        pos = [d[a, p] for p in range(b) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(b) if labels[n] != labels[a]]
        x = (max(pos) if pos else 0.0) - min(neg)
        out.append(np.logaddexp(0.0, x) if soft else max(x + margin, 0.0))
    return float(np.mean(out))


def tfa_semihard_dense(labels, pdist_matrix, margin):
    """TFA 0.23's triplet_semihard_loss body (O(B^3) tiling), for gradient comparisons."""

    def masked_maximum(data, mask, dim=1):
        axis_minimums = tf.math.reduce_min(data, dim, keepdims=True)
        return tf.math.reduce_max((data - axis_minimums) * mask, dim, keepdims=True) + axis_minimums

    def masked_minimum(data, mask, dim=1):
        axis_maximums = tf.math.reduce_max(data, dim, keepdims=True)
        return tf.math.reduce_min((data - axis_maximums) * mask, dim, keepdims=True) + axis_maximums

    labels = tf.reshape(labels, [-1, 1])
    adjacency = tf.math.equal(labels, tf.transpose(labels))
    adjacency_not = tf.math.logical_not(adjacency)
    batch_size = tf.size(labels)
    pdist_matrix_tile = tf.tile(pdist_matrix, [batch_size, 1])
    mask = tf.math.logical_and(
        tf.tile(adjacency_not, [batch_size, 1]),
        tf.math.greater(pdist_matrix_tile, tf.reshape(tf.transpose(pdist_matrix), [-1, 1])),
    )
    mask_final = tf.reshape(
        tf.math.greater(tf.math.reduce_sum(tf.cast(mask, tf.float32), 1, keepdims=True), 0.0),
        [batch_size, batch_size],
    )
    mask_final = tf.transpose(mask_final)
    adjacency_not = tf.cast(adjacency_not, tf.float32)
    mask = tf.cast(mask, tf.float32)
    negatives_outside = tf.transpose(tf.reshape(masked_minimum(pdist_matrix_tile, mask), [batch_size, batch_size]))
    negatives_inside = tf.tile(masked_maximum(pdist_matrix, adjacency_not), [1, batch_size])
    semi_hard_negatives = tf.where(mask_final, negatives_outside, negatives_inside)
    loss_mat = tf.math.add(margin, pdist_matrix - semi_hard_negatives)
    mask_positives = tf.cast(adjacency, tf.float32) - tf.linalg.diag(tf.ones([batch_size]))
    num_positives = tf.math.reduce_sum(mask_positives)
    return tf.math.reduce_sum(tf.math.maximum(loss_mat * mask_positives, 0.0)) / num_positives


METRICS = ["L2", "squared-L2", "angular"]


@st.composite
def batches(draw, max_batch=12):
    b = draw(st.integers(2, max_batch))
    dim = draw(st.integers(1, 5))
    k = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=b).astype(draw(st.sampled_from([np.int32, np.int64])))
    x = rng.normal(size=(b, dim)).astype(np.float32)
    if draw(st.booleans()):
        x = np.round(x * 2) / 2  # coarse grid: exact ties between distances
    if draw(st.booleans()) and b > 2:
        x[1] = x[0]  # duplicated embeddings
    # No zero vector: l2_normalize's gradient there is ~1e6 and turns rounding into noise.
    x[np.abs(x).sum(axis=1) == 0, 0] = 1.0
    return labels, x


_hyp = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# "tf": TensorFlow sort (XLA / GPU / small batches); "numpy": the CPU path of larger batches.
IMPLS = st.sampled_from(["tf", "numpy"])


class _sort_impl:
    def __init__(self, impl):
        self.impl = impl

    def __enter__(self):
        self.saved, L.sorting.SORT_IMPL = L.sorting.SORT_IMPL, self.impl

    def __exit__(self, *exc):
        L.sorting.SORT_IMPL = self.saved


@_hyp
@given(batch=batches(), metric=st.sampled_from(METRICS), margin=st.sampled_from([0.0, 0.1, 1.0, 3.0]), impl=IMPLS)
def test_semihard_matches_definition(batch, metric, margin, impl):
    labels, x = batch
    d = L.distance_matrix(tf.constant(x), metric).numpy()
    expected = np_semihard(labels, d.astype(np.float64), margin)
    with _sort_impl(impl):
        value = L.triplet_semihard_loss(labels, x, margin=margin, distance_metric=metric).numpy()
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


@_hyp
@given(batch=batches(), metric=st.sampled_from(METRICS), margin=st.sampled_from([0.0, 0.5, 1.0]), soft=st.booleans())
def test_hard_matches_definition(batch, metric, margin, soft):
    labels, x = batch
    d = L.distance_matrix(tf.constant(x), metric).numpy()
    expected = np_hard(labels, d.astype(np.float64), margin, soft)
    value = L.triplet_hard_loss(labels, x, margin=margin, soft=soft, distance_metric=metric).numpy()
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(batch=batches(max_batch=10), metric=st.sampled_from(METRICS))
def test_distances_match_numpy(batch, metric):
    _, x = batch
    d = L.distance_matrix(tf.constant(x), metric).numpy()
    assert d.shape == (len(x), len(x))
    np.testing.assert_array_equal(np.diag(d), 0.0)
    assert (d >= 0).all()
    np.testing.assert_allclose(d, np_distances(x, metric), atol=2e-3, rtol=1e-4)


@_hyp
@given(batch=batches(), metric=st.sampled_from(METRICS), margin=st.sampled_from([0.1, 1.0]), impl=IMPLS)
def test_semihard_value_and_gradient_match_tfa_algorithm(batch, metric, margin, impl):
    """Against TFA's tiled algorithm: same values and gradients, ties included."""
    labels, x = batch
    if _degenerate(labels):
        return
    e = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape, _sort_impl(impl):
        tape.watch(e)
        ours = L.triplet_semihard_loss(labels, e, margin=margin, distance_metric=metric)
        theirs = tfa_semihard_dense(tf.constant(labels), L.distance_matrix(e, metric), margin)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    if _positive_tied_with_negative(labels, L.distance_matrix(e, metric).numpy()):
        return  # the documented residual difference in the gradient's split (values agree)
    np.testing.assert_allclose(tape.gradient(ours, e).numpy(), tape.gradient(theirs, e).numpy(), atol=1e-5)


def _positive_tied_with_negative(labels, d):
    """A positive and a negative of one anchor at equal d - row_max (float32): TFA then spreads
    the gradient over negatives that such a positive separates in our sorted order."""
    labels = np.asarray(labels).ravel()
    shifted = d.astype(np.float32) - d.max(axis=1, keepdims=True).astype(np.float32)
    for a in range(len(labels)):
        pos = {shifted[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]}
        if any(shifted[a, n] in pos for n in range(len(labels)) if labels[n] != labels[a]):
            return True
    return False


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", ["semihard", "hard", "soft"])
def test_gradient_finite_differences_float64(metric, kind):
    rng = np.random.default_rng(7)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3], np.int32)
    x = rng.normal(size=(9, 3))
    margin = 0.8

    def ref(v):
        d = np_distances(v.reshape(x.shape), metric)
        if kind == "semihard":
            return np_semihard(labels, d, margin)
        return np_hard(labels, d, margin, soft=kind == "soft")

    fn = {
        "semihard": L.triplet_semihard_loss,
        "hard": lambda y, e, **k: L.triplet_hard_loss(y, e, **k),
        "soft": lambda y, e, **k: L.triplet_hard_loss(y, e, soft=True, **k),
    }[kind]
    value, grad = _value_and_grad(fn, labels, x, margin=margin, distance_metric=metric)
    assert grad.dtype == np.float64
    np.testing.assert_allclose(value, ref(x), rtol=1e-6)
    eps = 1e-6
    flat = x.ravel()
    fd = np.zeros_like(flat)
    for j in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[j] += eps
        down[j] -= eps
        fd[j] = (ref(up) - ref(down)) / (2 * eps)
    np.testing.assert_allclose(grad.ravel(), fd, atol=1e-5)


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize(
    "fn", [L.triplet_semihard_loss, L.triplet_hard_loss, lambda y, e: L.triplet_hard_loss(y, e, soft=True)]
)
@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4], [3, 3, 3, 3], [7]], ids=["distinct", "one-class", "single"])
def test_degenerate_batches_zero_not_nan(fn, labels):
    x = np.random.default_rng(0).normal(size=(len(labels), 3)).astype(np.float32)
    value, grad = _value_and_grad(fn, np.array(labels), x)
    assert value == 0.0
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("fn", [L.triplet_semihard_loss, L.triplet_hard_loss])
def test_low_precision_computed_in_float32(dtype, fn):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=16)
    x = tf.cast(rng.normal(size=(16, 8)), dtype)
    value = fn(labels, x)
    assert value.dtype == dtype
    reference = fn(labels, tf.cast(x, tf.float32))
    np.testing.assert_allclose(float(value), float(reference), rtol=1e-2)
    _, grad = _value_and_grad(fn, labels, x)
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_soft_hard_loss_stable_at_large_scale():
    rng = np.random.default_rng(2)
    labels = np.array([0, 0, 1, 1, 2, 2])
    x = (rng.normal(size=(6, 4)) * 100).astype(np.float32)
    value, grad = _value_and_grad(L.triplet_hard_loss, labels, x, soft=True, distance_metric="squared-L2")
    d = L.pairwise_distance(x, squared=True).numpy().astype(np.float64)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, np_hard(labels, d, 1.0, soft=True), rtol=1e-5)


def test_labels_shapes_and_dtypes_agree():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=20)
    x = rng.normal(size=(20, 5)).astype(np.float32)
    values = [
        L.triplet_semihard_loss(y, x).numpy()
        for y in (labels.astype(np.int32), labels.astype(np.int64), labels.reshape(-1, 1))
    ]
    assert values[0] == values[1] == values[2]


def test_callable_distance_metric():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=12)
    x = rng.normal(size=(12, 4)).astype(np.float32)

    def manhattan(e):
        return tf.reduce_sum(tf.abs(e[:, None, :] - e[None, :, :]), axis=-1)

    d = manhattan(tf.constant(x)).numpy().astype(np.float64)
    for margin in (0.5, 2.0):
        np.testing.assert_allclose(
            L.triplet_semihard_loss(labels, x, margin=margin, distance_metric=manhattan).numpy(),
            np_semihard(labels, d, margin),
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            L.triplet_hard_loss(labels, x, margin=margin, distance_metric=manhattan).numpy(),
            np_hard(labels, d, margin),
            rtol=1e-5,
        )
    with pytest.raises(ValueError):
        L.distance_matrix(x, "cosine")


@pytest.mark.slow
@pytest.mark.parametrize("static_shape", [True, False])
def test_row_chunked_mining_matches_one_block(monkeypatch, static_shape):
    """Large batches are mined in row blocks (bounded memory): same value and gradient."""
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 5, size=70)
    x = np.round(rng.normal(size=(70, 3)) * 2).astype(np.float32) / 2  # with ties
    x[5] = x[4]
    full_value, full_grad = _value_and_grad(L.triplet_semihard_loss, labels, x, margin=0.6)
    monkeypatch.setattr(L.mining, "_CHUNK_ELEMENTS", 300)  # blocks of 4 rows, the last one shorter
    signature = None if static_shape else [tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 3], tf.float32)]

    @tf.function(input_signature=signature)
    def step(y, e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = L.triplet_semihard_loss(y, e, margin=0.6)
        return value, tape.gradient(value, e)

    if static_shape:  # a static batch this small would be one block: force the loop
        monkeypatch.setattr(L.mining, "_CHUNK_ELEMENTS", 30)
    value, grad = step(tf.constant(labels), tf.constant(x))
    np.testing.assert_allclose(value.numpy(), full_value, rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), full_grad, atol=1e-6)


def test_large_batch_memory_is_quadratic():
    """B = 2048 would need 2048^3 * 4 B = 32 GiB with TFA's tiling; here it is B^2-sized."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, size=2048)
    x = rng.normal(size=(2048, 16)).astype(np.float32)
    value, grad = _value_and_grad(L.triplet_semihard_loss, labels, x)
    assert np.isfinite(value) and grad.shape == x.shape


# --------------------------------------------------------------------------- Keras
@pytest.mark.parametrize(
    "loss",
    [
        L.TripletSemiHardLoss(margin=0.3, distance_metric="angular"),
        L.TripletHardLoss(margin=0.2, soft=True, distance_metric="squared-L2", global_batch=True),
    ],
)
def test_config_round_trip(loss):
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert keras.saving.get_registered_name(type(loss)).startswith("triplet_tfx>")


@pytest.mark.slow
@pytest.mark.parametrize("loss", [L.TripletSemiHardLoss(margin=0.5), L.TripletHardLoss(soft=True)])
def test_keras_fit_save_and_reload(loss, tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, 4, size=64).astype(np.int64)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=loss)  # jit_compile="auto": XLA on TensorFlow
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert type(reloaded.loss) is type(loss)
    assert reloaded.loss.get_config() == loss.get_config()
    expected = loss(y, model.predict(x, batch_size=64, verbose=0)).numpy()
    np.testing.assert_allclose(reloaded.evaluate(x, y, batch_size=64, verbose=0), expected, rtol=1e-5)


# --------------------------------------------------------------------------- global batch
_GLOBAL_SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["TF_USE_LEGACY_KERAS"] = "0"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from triplet_tfx.components.training import losses as L

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    R = strategy.num_replicas_in_sync
    B, D = 12, 5
    rng = np.random.default_rng(0)
    out = {"replicas": R}

    def numpy_sort(fn, *args, **kwargs):  # the CPU path of larger batches, traced here
        saved, L.sorting.SORT_IMPL = L.sorting.SORT_IMPL, "numpy"
        try:
            return fn(*args, **kwargs)
        finally:
            L.sorting.SORT_IMPL = saved
    fns = {
        "semihard": (lambda l, e: L.triplet_semihard_loss(l, e, margin=0.7, global_batch=True),
                     lambda l, e: L.triplet_semihard_loss(l, e, margin=0.7)),
        "hard": (lambda l, e: L.triplet_hard_loss(l, e, margin=0.7, global_batch=True),
                 lambda l, e: L.triplet_hard_loss(l, e, margin=0.7)),
        "numpy_sort": (lambda l, e: numpy_sort(L.triplet_semihard_loss, l, e, margin=0.3, global_batch=True),
                       lambda l, e: L.triplet_semihard_loss(l, e, margin=0.3)),
        # The Loss class divides by the replicas itself (Keras convention): undo it here.
        "keras": (lambda l, e: R * L.TripletSemiHardLoss(margin=0.7, global_batch=True)(l, e),
                  lambda l, e: L.TripletSemiHardLoss(margin=0.7)(l, e)),
    }
    for name, (fn, ref_fn) in fns.items():
        emb = rng.normal(size=(R * B, D)).astype(np.float32)
        lab = rng.integers(0, 4, size=R * B).astype(np.int32)
        e_d = strategy.experimental_distribute_values_from_function(
            lambda c: emb[c.replica_id_in_sync_group * B:(c.replica_id_in_sync_group + 1) * B])
        l_d = strategy.experimental_distribute_values_from_function(
            lambda c: lab[c.replica_id_in_sync_group * B:(c.replica_id_in_sync_group + 1) * B])

        @tf.function
        def step(e, l):
            def replica(e, l):
                with tf.GradientTape() as tape:
                    tape.watch(e)
                    loss = fn(l, e)
                    scaled = loss / R  # the convention: divide by replicas, sum gradients
                return loss, tape.gradient(scaled, e)
            return strategy.run(replica, args=(e, l))

        losses, grads = step(e_d, l_d)
        losses = [float(v) for v in strategy.experimental_local_results(losses)]
        grads = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads)])
        et = tf.constant(emb)
        with tf.GradientTape() as tape:
            tape.watch(et)
            ref = ref_fn(lab, et)
        ref_grad = tape.gradient(ref, et).numpy()
        out[name] = {"losses": losses, "ref": float(ref),
                     "grad_err": float(np.abs(grads - ref_grad).max()),
                     "grad_scale": float(np.abs(ref_grad).max())}

    # model.fit under the strategy == one device on the concatenated batch.
    X = rng.normal(size=(2 * R * B, D)).astype(np.float32)
    Y = rng.integers(0, 3, size=2 * R * B).astype(np.int32)
    def fit(strategy_or_none):
        keras.utils.set_random_seed(1)
        def build():
            m = keras.Sequential([keras.Input((D,)), keras.layers.Dense(
                4, kernel_initializer=keras.initializers.GlorotUniform(seed=3))])
            m.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False,
                      loss=L.TripletSemiHardLoss(margin=0.7, global_batch=True))
            return m
        if strategy_or_none is None:
            m = build()
        else:
            with strategy_or_none.scope():
                m = build()
        h = m.fit(X, Y, batch_size=R * B, epochs=1, shuffle=False, verbose=0)
        return m.get_weights()[0], h.history["loss"][0]
    w1, l1 = fit(None)
    w2, l2 = fit(strategy)
    out["fit"] = {"loss_single": float(l1), "loss_mirrored": float(l2),
                  "weight_err": float(np.abs(w1 - w2).max())}
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_global_batch_mining_matches_single_device():
    env = dict(os.environ, TF_USE_LEGACY_KERAS="0", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _GLOBAL_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-5000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["replicas"] == 2
    for name in ("semihard", "hard", "numpy_sort", "keras"):
        r = out[name]
        for v in r["losses"]:  # every replica reports the global loss
            assert v == pytest.approx(r["ref"], rel=1e-5, abs=1e-6), name
        assert r["grad_scale"] > 0
        assert r["grad_err"] <= 1e-6, (name, r)
    fit = out["fit"]
    assert fit["loss_mirrored"] == pytest.approx(fit["loss_single"], rel=1e-5)
    assert fit["weight_err"] <= 1e-6


@pytest.mark.parametrize("batch, numpy_sorts", [(32, False), (100, True)])
def test_batch_size_known_at_run_time_picks_the_sort(batch, numpy_sorts, monkeypatch):
    """Keras batches without drop_remainder have no static size: a batch of <= 64 must still take
    tf.sort (cheaper per step), a larger one NumPy's sort, with the same value either way."""
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("NumPy sorting is a CPU path")
    calls = []
    numpy_layout = L.sorting._np_sorted_layout

    def counted(keys, row_max):
        calls.append(keys.shape)
        return numpy_layout(keys, row_max)

    monkeypatch.setattr(L.sorting, "SORT_IMPL", "auto")
    monkeypatch.setattr(L.sorting, "_np_sorted_layout", counted)
    rng = np.random.default_rng(3)
    labels = tf.constant(rng.integers(0, 5, batch), tf.int64)
    embeddings = tf.math.l2_normalize(tf.constant(rng.normal(size=(batch, 8)), tf.float32), axis=1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 8], tf.float32)])
    def dynamic(y, x):
        return L.triplet_semihard_loss(y, x, margin=1.0)

    value = dynamic(labels, embeddings)
    assert bool(calls) is numpy_sorts
    monkeypatch.setattr(L.sorting, "SORT_IMPL", "tf")
    np.testing.assert_allclose(value, L.triplet_semihard_loss(labels, embeddings, margin=1.0), rtol=1e-6)
