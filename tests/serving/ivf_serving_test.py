"""The served model with an ivf index: `search` keeps its inputs and outputs, `search_with_nprobe`
takes the lists to probe per request, and probing every list of float32 vectors is exact search."""

import contextlib
import io
import os

import numpy as np
import pytest
import tensorflow as tf
import tiny_serving_model
from search_test import png, signature_table
from tensorflow.python.tools import saved_model_cli

from triplet_tfx.components import ivf_index
from triplet_tfx.components.data import data_sources
from triplet_tfx.components.evaluation import metrics
from triplet_tfx.components.serving import index

pytestmark = pytest.mark.slow

LISTS = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """({storage: served model path}, the reference embeddings, labels, {storage: recall@10 returned})."""
    export = tiny_serving_model.trained_export()
    train_x, train_y, _, _ = tiny_serving_model.mnist_examples()
    examples = [data_sources.make_example(x, y) for x, y in zip(train_x, train_y)]
    embeddings = (
        tf.saved_model.load(export).signatures["serving_default"](examples=tf.constant(examples))["embedding"].numpy()
    )
    ids = index.reference_ids("train", len(train_y))
    paths, recalls = {}, {}
    for storage in ("float32", "int8"):
        state = ivf_index.build_for(embeddings, ids, train_y, LISTS, storage)
        paths[storage] = str(tmp_path_factory.mktemp(storage) / "1")
        recalls[storage] = index.build_serving_model(
            export,
            ids,
            train_y,
            embeddings,
            paths[storage],
            ivf=state,
            nprobe=2,
            recall_queries=recall_queries(embeddings),
        )
    return paths, embeddings, train_y, recalls


def recall_queries(embeddings):
    return embeddings[:60] + 0.01


def _queries():
    _, _, images, _ = tiny_serving_model.mnist_examples()
    return tf.constant([png(x) for x in images[:40]])


def test_the_signatures(served):
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        saved_model_cli._show_all(served[0]["int8"])
    table = signature_table(output.getvalue())
    answer = {
        "ids": ("DT_STRING", "(-1, -1)"),
        "labels": ("DT_INT64", "(-1, -1)"),
        "distances": ("DT_FLOAT", "(-1, -1)"),
        "class_names": ("DT_STRING", "(-1, -1)"),
    }
    assert table["search"] == {"inputs": {"images": ("DT_STRING", "(-1)"), "k": ("DT_INT32", "()")}, "outputs": answer}
    assert table["search_with_nprobe"] == {
        "inputs": {"images": ("DT_STRING", "(-1)"), "k": ("DT_INT32", "()"), "nprobe": ("DT_INT32", "()")},
        "outputs": answer,
    }


def test_every_list_of_float32_vectors_is_exact_search(served):
    paths, references, labels, _ = served
    model = tf.saved_model.load(paths["float32"])
    images = _queries()
    found = model.signatures["search_with_nprobe"](images=images, k=tf.constant(5), nprobe=tf.constant(LISTS))
    queries = model.signatures["embed_images"](images=images)["embedding"].numpy()
    expected, distances = metrics.nearest_neighbors(queries, references, k=5)
    ids = np.array([[int(i.decode().split("/")[1]) for i in row] for row in found["ids"].numpy()])
    np.testing.assert_allclose(found["distances"].numpy(), distances, rtol=1e-5, atol=1e-5)
    ties = np.isclose(found["distances"].numpy(), distances, atol=1e-6)
    assert ((ids == expected) | ties).all()
    np.testing.assert_array_equal(found["labels"].numpy(), labels[ids])
    names = [[n.decode() for n in row] for row in found["class_names"].numpy()]
    assert names == labels[ids].astype(str).tolist()


def test_search_probes_the_default_lists_and_nprobe_changes_the_answer_set(served):
    paths, references, _, _ = served
    model = tf.saved_model.load(paths["int8"])
    images = _queries()
    default = model.signatures["search"](images=images, k=tf.constant(10))
    two = model.signatures["search_with_nprobe"](images=images, k=tf.constant(10), nprobe=tf.constant(2))
    np.testing.assert_array_equal(default["ids"].numpy(), two["ids"].numpy())  # the saved default: 2 lists
    queries = model.signatures["embed_images"](images=images)["embedding"].numpy()
    exact = index.reference_ids("train", len(references))[metrics.nearest_neighbors(queries, references, k=10)[0]]
    every = model.signatures["search_with_nprobe"](images=images, k=tf.constant(10), nprobe=tf.constant(LISTS))
    recall_two = ivf_index.recall(np.char.decode(two["ids"].numpy().astype(bytes)).astype(object), exact)
    recall_every = ivf_index.recall(np.char.decode(every["ids"].numpy().astype(bytes)).astype(object), exact)
    assert recall_every >= 0.95 and recall_every >= recall_two  # int8 codes: near-ties may swap


@pytest.mark.parametrize(
    "k,nprobe,message",
    [
        (0, 2, "k must be at least 1"),
        (601, 2, "k must be at most the index size"),
        (3, 0, "nprobe must be at least 1"),
        (3, LISTS + 1, "nprobe must be at most the number of lists"),
    ],
)
def test_bad_requests_are_invalid_argument(served, k, nprobe, message):
    model = tf.saved_model.load(served[0]["int8"])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model.signatures["search_with_nprobe"](images=_queries()[:1], k=tf.constant(k), nprobe=tf.constant(nprobe))


def test_recall_of_every_list_is_one_and_a_bad_nprobe_is_refused(served):
    _, references, labels, _ = served
    ids = index.reference_ids("train", len(labels))
    state = ivf_index.build_for(references, ids, labels, LISTS, "float32")
    assert (
        ivf_index.recall_against_exact(ivf_index.IvfIndex(state), LISTS, references[:50] + 0.01, references, ids) == 1.0
    )
    with pytest.raises(ValueError, match=r"nprobe must be in \[1, 8\]"):
        index.ServingModel(None, ids, labels, None, ivf=state, nprobe=LISTS + 1)


def test_the_recall_returned_is_the_saved_indexs(served):
    paths, references, labels, recalls = served
    ids = index.reference_ids("train", len(labels))
    for storage, path in paths.items():
        loaded = tf.saved_model.load(path)
        measured = ivf_index.recall_against_exact(loaded.ivf, 2, recall_queries(references), references, ids)
        assert 0.0 < recalls[storage] == measured <= 1.0, storage
    export = tiny_serving_model.trained_export()
    exact_path = str(os.path.join(os.path.dirname(paths["int8"]), "exact"))
    assert index.build_serving_model(export, ids, labels, references, exact_path, recall_queries=references[:5]) is None
