"""The served `match` signature: each image's nearest reference, as `search` with k = 1 finds it,
and `matched` exactly when its distance is within the calibrated threshold; exact and ivf indexes."""

import numpy as np
import pytest
import tensorflow as tf
import tiny_serving_model
from search_test import png

from triplet_tfx.components import ivf_index
from triplet_tfx.components.data import data_sources
from triplet_tfx.components.serving import index

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def references():
    export = tiny_serving_model.trained_export()
    train_x, train_y, _, _ = tiny_serving_model.mnist_examples()
    examples = [data_sources.make_example(x, y) for x, y in zip(train_x, train_y)]
    embeddings = (
        tf.saved_model.load(export).signatures["serving_default"](examples=tf.constant(examples))["embedding"].numpy()
    )
    return export, index.reference_ids("train", len(train_y)), train_y, embeddings


def queries():
    _, _, images, _ = tiny_serving_model.mnist_examples()
    return tf.constant([png(x) for x in images[:50]])


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_match_is_the_nearest_reference_within_the_threshold(references, tmp_path, kind):
    export, ids, labels, embeddings = references
    ivf = ivf_index.build_for(embeddings, ids, labels, 4, "float32") if kind == "ivf" else None
    searched = index.build_serving_model(export, ids, labels, embeddings, str(tmp_path / "plain"), ivf=ivf, nprobe=4)
    assert searched is None
    # A threshold between the queries' nearest distances: some match, some do not.
    plain = tf.saved_model.load(str(tmp_path / "plain"))
    assert "match" not in plain.signatures  # no threshold: no `match`
    best = plain.signatures["search"](images=queries(), k=tf.constant(1))
    threshold = float(np.median(best["distances"].numpy()))
    index.build_serving_model(
        export, ids, labels, embeddings, str(tmp_path / "match"), ivf=ivf, nprobe=4, match_threshold=threshold
    )
    match = tf.saved_model.load(str(tmp_path / "match")).signatures["match"]
    answer = match(images=queries())
    assert {name: tuple(t.shape) for name, t in answer.items()} == {
        name: (50,) for name in ("ids", "labels", "class_names", "distances", "matched")
    }
    for name in ("ids", "labels", "class_names"):
        np.testing.assert_array_equal(answer[name].numpy(), best[name].numpy()[:, 0])
    distances = answer["distances"].numpy()
    np.testing.assert_allclose(distances, best["distances"].numpy()[:, 0], rtol=1e-6)
    np.testing.assert_array_equal(answer["matched"].numpy(), distances <= np.float32(threshold))
    assert 0 < answer["matched"].numpy().sum() < 50
