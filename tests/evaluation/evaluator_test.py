"""The blessing rule: absolute lower bounds, and no regression against a baseline beyond a tolerance."""

from triplet_tfx.components.config import EvalConfig
from triplet_tfx.components.evaluation.evaluator import blessing_decision

RULE = EvalConfig(
    lower_bounds={"precision_at_1": 0.9, "map_at_r": 0.5},
    compared_metrics=("precision_at_1", "map_at_r"),
    max_regression=0.01,
)


def test_bounds_met_without_baseline_blesses():
    blessed, reasons = blessing_decision({"precision_at_1": 0.95, "map_at_r": 0.6}, None, RULE)
    assert blessed and reasons == ["map_at_r 0.6000 >= threshold 0.5000", "precision_at_1 0.9500 >= threshold 0.9000"]


def test_any_bound_missed_rejects():
    blessed, reasons = blessing_decision({"precision_at_1": 0.95, "map_at_r": 0.4}, None, RULE)
    assert not blessed and "map_at_r 0.4000 < threshold 0.5000" in reasons


def test_missing_metric_rejects():
    blessed, reasons = blessing_decision({"precision_at_1": 0.95}, None, RULE)
    assert not blessed and "map_at_r unavailable (threshold 0.5000)" in reasons


def test_regression_within_tolerance_blesses_beyond_rejects():
    baseline = {"precision_at_1": 0.96, "map_at_r": 0.70}
    assert blessing_decision({"precision_at_1": 0.951, "map_at_r": 0.69}, baseline, RULE)[0]
    blessed, reasons = blessing_decision({"precision_at_1": 0.949, "map_at_r": 0.75}, baseline, RULE)
    assert not blessed
    assert "precision_at_1 0.9490 vs baseline 0.9600: regression beyond tolerance 0.0100" in reasons
    assert "map_at_r 0.7500 vs baseline 0.7000: within tolerance 0.0100" in reasons


def test_gallery_decodes_the_chosen_train_neighbours_only():
    import numpy as np

    from triplet_tfx.components.data.data_sources import make_example
    from triplet_tfx.components.evaluation.evaluator import gallery

    shape = (2, 2, 1)
    query_labels = np.array([0, 1, 1])
    query_images = np.stack([np.full(shape, 10 + i, np.uint8) for i in range(3)])
    reference_labels = np.array([0, 0, 1, 1])
    references = [make_example(np.full(shape, 100 + i, np.uint8), label) for i, label in enumerate(reference_labels)]
    neighbours = np.array([[0, 1], [0, 2], [2, 3]])  # query 1 has a wrong nearest neighbour; 0 and 2 are right
    shown = gallery(query_labels, query_images, neighbours, np.zeros(3, bool), references, reference_labels, shape)
    np.testing.assert_array_equal(shown["query_labels"], [1])
    np.testing.assert_array_equal(shown["query_images"][:, 0, 0, 0], [11])
    np.testing.assert_array_equal(shown["neighbour_labels"], [[0, 1]])
    np.testing.assert_array_equal(shown["neighbour_images"][0, :, 0, 0, 0], [100, 102])  # references 0 and 2
    # Leave-one-out: the neighbours are other queries.
    shown = gallery(query_labels, query_images, np.array([[1], [0], [1]]), np.zeros(3, bool), None, None, shape)
    np.testing.assert_array_equal(shown["query_labels"], [0, 1])
    np.testing.assert_array_equal(shown["neighbour_images"][:, 0, 0, 0, 0], [11, 10])


# Encoded-source examples: the pictures are decoded by the image function; classes are named.
import io  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from triplet_tfx.components import contract, examples_io  # noqa: E402
from triplet_tfx.components.evaluation import evaluator  # noqa: E402


def _example(pixels: np.ndarray, label: int, name: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    feature = {
        contract.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[out.getvalue()])),
        contract.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        contract.CLASS_NAME_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_encoded_examples_are_decoded_at_the_training_shape_as_transform_decodes_them():
    from triplet_tfx.components import images

    white = np.full((40, 80, 3), 255, np.uint8)
    examples = [_example(white, 1, "bee"), _example(np.zeros((12, 12, 3), np.uint8), 0, "ant")]
    labels, pictures = examples_io.parse_examples(examples, (16, 12, 3), encoded=True, resize="pad")
    assert labels.tolist() == [1, 0] and pictures.shape == (2, 16, 12, 3) and pictures.dtype == np.uint8
    traced = tf.function(
        lambda x: images.decode_to_pixels(x, (16, 12, 3), "pad"), input_signature=[tf.TensorSpec([None], tf.string)]
    )
    files = tf.io.parse_example(tf.constant(examples), {"image": tf.io.FixedLenFeature([], tf.string)})["image"]
    np.testing.assert_array_equal(pictures, traced(files).numpy())
    assert examples_io.parse_examples(examples)[1] is None  # labels only


def test_raw_examples_are_decoded_as_today():
    from triplet_tfx.components.data import data_sources

    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 3, 1), dtype=np.uint8)
    examples = [data_sources.make_example(p, i) for i, p in enumerate(pixels)]
    labels, pictures = examples_io.parse_examples(examples, (4, 3, 1))
    np.testing.assert_array_equal(pictures, pixels)
    assert labels.tolist() == [0, 1]


def test_class_name_map_and_the_models_class_names(tmp_path):
    from tfx.types.standard_artifacts import Model
    from tfx.utils import path_utils

    from triplet_tfx.components import signatures

    assert evaluator.class_name_map(["ant", "bee", "cat"], np.array([2, 0, 2])) == {"0": "ant", "2": "cat"}
    assert evaluator.class_name_map(None, np.array([1, 0])) == {"0": "0", "1": "1"}
    assert evaluator.class_name_map(["ant"], np.array([0, 3])) == {"0": "ant", "3": "3"}
    model = Model()
    model.uri = str(tmp_path)
    assert evaluator.model_class_names(model) is None  # a model from before class names
    signatures.write_class_names(path_utils.serving_model_path(model.uri), ["ant", "bee"])
    assert evaluator.model_class_names(model) == ["ant", "bee"]
    assert os.path.basename(signatures.write_class_names(str(tmp_path / "x"), ["a"])) == contract.CLASS_NAMES_ASSET


def test_a_savedmodel_is_loaded_once_until_it_is_written_again(tmp_path):
    """The evaluator and the serving builder of a local run embed with the same Trainer model: one
    loading. A model written again at the same path is loaded anew."""

    def write(value: float) -> None:
        module = tf.Module()
        module.value = tf.Variable(value)
        tf.saved_model.save(module, str(tmp_path))
        stamp = os.stat(tmp_path / "saved_model.pb").st_mtime_ns + 1_000_000_000 * int(value)
        os.utime(tmp_path / "saved_model.pb", ns=(stamp, stamp))  # a distinct time even on coarse clocks

    write(1.0)
    first = examples_io.load_model(str(tmp_path))
    assert examples_io.load_model(str(tmp_path)) is first
    write(2.0)
    again = examples_io.load_model(str(tmp_path))
    assert again is not first and float(again.value.numpy()) == 2.0


def test_messages_name_a_model_by_the_end_of_its_folder():
    """The folder a user finds in the run's output tree, not TFX's artifact id (which differs from
    the execution id in the path)."""
    from tfx.types.standard_artifacts import Model

    model = Model()
    model.uri, model.id = "/runs/pipelines/triplet-mnist/Trainer/model/8/", 7
    assert examples_io.model_label(model) == "Trainer/model/8"


def test_the_served_index_recall_reads_the_index_split_only_for_an_ivf_index(tmp_path):
    from tfx.types import artifact_utils, standard_artifacts

    from triplet_tfx.components.config import ServingConfig

    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path)
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    os.makedirs(tmp_path / "Split-train")
    (tmp_path / "Split-train" / "data_tfrecord-00000-of-00001.gz").write_bytes(b"not a gzip file")
    queries = np.zeros((2, 4), np.float32)
    assert evaluator.served_index_recall(None, queries, examples, ServingConfig(index="exact")) is None
    with pytest.raises(tf.errors.DataLossError):  # the split is read for an ivf index
        evaluator.served_index_recall(None, queries, examples, ServingConfig(index="ivf"))
