"""The served model: four signatures (as `saved_model_cli show --all` lists them), the index in
variables, and `search` answering with the evaluator's own nearest neighbours."""

import contextlib
import io
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tiny_serving_model
from PIL import Image
from tensorflow.python.tools import saved_model_cli

from triplet_tfx.components import ivf_index, signatures
from triplet_tfx.components.data import data_sources
from triplet_tfx.components.evaluation import metrics
from triplet_tfx.components.serving import index

pytestmark = pytest.mark.slow

DIM = tiny_serving_model.CONFIG.train.embedding_dim


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels[..., 0]).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(served model path, reference embeddings, reference labels), built as the ServingModelBuilder
    builds it: the export's serving_default on the train examples."""
    export = tiny_serving_model.trained_export()
    train_x, train_y, _, _ = tiny_serving_model.mnist_examples()
    examples = [data_sources.make_example(x, y) for x, y in zip(train_x, train_y)]
    embeddings = (
        tf.saved_model.load(export).signatures["serving_default"](examples=tf.constant(examples))["embedding"].numpy()
    )
    path = str(tmp_path_factory.mktemp("served") / "1")
    index.build_serving_model(export, index.reference_ids("train", len(train_y)), train_y, embeddings, path)
    return path, embeddings, train_y


@pytest.fixture(scope="module")
def model(served):
    return tf.saved_model.load(served[0])


def signature_table(cli_output: str) -> dict:
    """{signature: {"inputs"|"outputs": {name: (dtype, shape)}}} from `saved_model_cli show --all` text."""
    table = {}
    for block in re.split(r"\n(?=signature_def\[)", cli_output)[1:]:
        name = re.match(r"signature_def\['([^']+)'\]", block).group(1)
        sides = {}
        for side, tensors in re.findall(r"following (input|output)\(s\):\n((?:    .*\n|        .*\n)*)", block):
            sides[side + "s"] = {
                n: (d, s)
                for n, d, s in re.findall(r"\['([^']+)'\] tensor_info:\n\s+dtype: (\w+)\n\s+shape: (.*)\n", tensors)
            }
        table[name] = sides
    return table


def test_saved_model_cli_shows_the_four_signatures(served):
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        saved_model_cli._show_all(served[0])  # what `saved_model_cli show --dir <version> --all` runs
    table = signature_table(output.getvalue())
    embedding = {"embedding": ("DT_FLOAT", f"(-1, {DIM})")}
    assert {name: sides for name, sides in table.items() if not name.startswith("__")} == {
        "serving_default": {"inputs": {"examples": ("DT_STRING", "(-1)")}, "outputs": embedding},
        "embed_images": {"inputs": {"images": ("DT_STRING", "(-1)")}, "outputs": embedding},
        "embed_pixels": {"inputs": {"pixels": ("DT_UINT8", "(-1, 28, 28, 1)")}, "outputs": embedding},
        "search": {
            "inputs": {"images": ("DT_STRING", "(-1)"), "k": ("DT_INT32", "()")},
            "outputs": {
                "ids": ("DT_STRING", "(-1, -1)"),
                "labels": ("DT_INT64", "(-1, -1)"),
                "distances": ("DT_FLOAT", "(-1, -1)"),
                "class_names": ("DT_STRING", "(-1, -1)"),
            },
        },
    }


def test_search_gives_the_class_names_of_integer_labels(served):
    """An integer-labelled (MNIST) model: the class names are the ids as text, kept in the assets."""
    path, _, _ = served
    assert signatures.read_class_names(path) == [str(i) for i in range(10)]
    search = tf.saved_model.load(path).signatures["search"]
    out = search(images=tf.constant([png(np.zeros((28, 28, 1), np.uint8))]), k=tf.constant(3))
    assert [[n.decode() for n in row] for row in out["class_names"].numpy()] == out["labels"].numpy().astype(
        str
    ).tolist()


def test_the_index_is_in_variables_not_in_the_graph(served, model):
    path, embeddings, labels = served
    np.testing.assert_array_equal(model.reference_embeddings.numpy(), embeddings)
    np.testing.assert_array_equal(model.reference_labels.numpy(), labels)
    assert model.reference_ids.numpy()[[0, -1]].tolist() == [b"train/0", f"train/{len(labels) - 1}".encode()]
    graph_bytes = os.path.getsize(os.path.join(path, "saved_model.pb"))
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    stored = [name for name in reader.get_variable_to_shape_map() if "reference_embeddings" in name]
    assert len(stored) == 1 and reader.get_tensor(stored[0]).shape == embeddings.shape
    # The graph does not grow with the index: a second model with 4x the references has the same graph.
    bigger = path + "_bigger"
    index.build_serving_model(
        tiny_serving_model.trained_export(),
        index.reference_ids("train", 4 * len(labels)),
        np.tile(labels, 4),
        np.tile(embeddings, (4, 1)),
        bigger,
    )
    assert abs(os.path.getsize(os.path.join(bigger, "saved_model.pb")) - graph_bytes) < 1024


def test_served_embeddings_are_the_exported_ones(model):
    export = tf.saved_model.load(tiny_serving_model.trained_export())
    _, _, images, labels = tiny_serving_model.mnist_examples()
    examples = tf.constant([data_sources.make_example(x, y) for x, y in zip(images[:20], labels[:20])])
    for name, inputs in (
        ("serving_default", {"examples": examples}),
        ("embed_images", {"images": tf.constant([png(x) for x in images[:20]])}),
        ("embed_pixels", {"pixels": tf.constant(images[:20])}),
    ):
        np.testing.assert_array_equal(
            model.signatures[name](**inputs)["embedding"].numpy(),
            export.signatures[name](**inputs)["embedding"].numpy(),
        )


def test_nearest_is_the_evaluators_knn_ties_included():
    rng = np.random.default_rng(3)
    references = rng.normal(size=(300, 8)).astype(np.float32)
    references /= np.linalg.norm(references, axis=1, keepdims=True)
    references[150:160] = references[10]  # exact ties: the lower index comes first in both
    queries = np.concatenate([references[:5] + 0.01, rng.normal(size=(20, 8)).astype(np.float32)])
    expected_indices, expected_distances = metrics.nearest_neighbors(queries, references, k=15)
    indices, distances = ivf_index.nearest(
        tf.constant(queries),
        tf.constant(references),
        tf.constant(np.einsum("ij,ij->i", references, references)),
        tf.constant(15),
    )
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_allclose(distances.numpy(), expected_distances, rtol=1e-5, atol=1e-5)


def test_search_answers_with_the_evaluators_neighbours(served, model):
    _, references, reference_labels = served
    _, _, images, labels = tiny_serving_model.mnist_examples()
    encoded = tf.constant([png(x) for x in images])
    found = model.signatures["search"](images=encoded, k=tf.constant(5))
    queries = model.signatures["embed_images"](images=encoded)["embedding"].numpy()
    expected_indices, expected_distances = metrics.nearest_neighbors(queries, references, k=5)
    ids = np.array([[int(i.decode().split("/")[1]) for i in row] for row in found["ids"].numpy()])
    distances = found["distances"].numpy()
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-5, atol=1e-5)
    ties = np.isclose(distances, expected_distances, atol=1e-6) & (ids != expected_indices)
    assert (ids == expected_indices).mean() > 0.99 and not (~ties & (ids != expected_indices)).any()
    np.testing.assert_array_equal(found["labels"].numpy(), reference_labels[ids])
    # The evaluator's Precision@1 (eval queries against the same references) is the top hit's label rate...
    precision_at_1 = metrics.evaluate_embeddings(queries, labels, references, reference_labels)["precision_at_1"]
    top_hit = (found["labels"].numpy()[:, 0] == labels).mean()
    assert top_hit == pytest.approx(precision_at_1, abs=0.01)
    # ...and the majority label of the 5 neighbours matches at about that rate (a trained model: well above chance).
    majority = np.array([np.bincount(row, minlength=10).argmax() for row in found["labels"].numpy()])
    assert precision_at_1 > 0.6 and abs((majority == labels).mean() - precision_at_1) < 0.1


@pytest.mark.parametrize(
    "images,k,message",
    [
        ([b"x"], 0, "k must be at least 1"),
        ([b"x"], 601, "k must be at most the index size"),
        ([], 3, "images: empty batch"),
        ([b"not an image"], 3, "images: not a PNG, JPEG, GIF or BMP image"),
    ],
)
def test_bad_search_requests_are_invalid_argument(model, images, k, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model.signatures["search"](images=tf.constant(images, tf.string), k=tf.constant(k))


def test_an_inconsistent_index_is_refused():
    with pytest.raises(ValueError, match="2 ids, 3 labels and 3 embeddings"):
        index.ServingModel(None, ["a", "b"], np.zeros(3), np.zeros((3, 4)))
