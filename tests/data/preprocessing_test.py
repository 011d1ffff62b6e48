"""Transform's preprocessing: raw pixel bytes and labels -> scaled float images and checked labels."""

import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.config import DataConfig, PipelineConfig
from triplet_tfx.components.data import preprocessing


def _config(**data):
    return {"data": PipelineConfig(data=DataConfig(**data)).to_dict()["data"]}


def test_preprocessing_fn_scales_and_shapes_images():
    pixels = np.array([[0, 51, 255, 102], [255, 255, 0, 0]], np.uint8)  # two 2x2x1 images
    inputs = {
        "image": tf.constant([[p.tobytes()] for p in pixels]),  # [B, 1], as SchemaGen infers it
        "label": tf.constant([[3], [1]], tf.int64),
    }
    out = preprocessing.preprocessing_fn(inputs, _config(image_height=2, image_width=2, channels=1, num_classes=4))
    assert out["image"].shape == (2, 2, 2, 1)
    np.testing.assert_allclose(out["image"].numpy().reshape(2, 4), pixels / 255.0, rtol=1e-6)
    assert out["label"].numpy().tolist() == [3, 1]


def test_sparse_inputs_are_accepted():
    image = tf.sparse.from_dense(tf.constant([[bytes([255] * 4)]]))
    label = tf.sparse.from_dense(tf.constant([[2]], tf.int64))
    out = preprocessing.preprocessing_fn(
        {"image": image, "label": label}, _config(image_height=2, image_width=2, channels=1, num_classes=4)
    )
    np.testing.assert_allclose(out["image"].numpy(), np.ones((1, 2, 2, 1)))


def test_wrong_image_size_names_the_feature():
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature 'image': expected 4 raw uint8 bytes"):
        preprocessing.decode_images(tf.constant([bytes(3)]), (2, 2, 1))


@pytest.mark.parametrize("label", [-1, 10])
def test_label_out_of_range_names_the_feature(label):
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature 'label'"):
        preprocessing.checked_labels(tf.constant([1, label], tf.int64), 10)


def test_raw_sources_are_bit_identical_to_the_raw_decoding():
    pixels = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 1), dtype=np.uint8)
    inputs = {"image": tf.constant([[p.tobytes()] for p in pixels]), "label": tf.constant([[0], [1], [2]], tf.int64)}
    out = preprocessing.preprocessing_fn(inputs, _config(image_height=4, image_width=5, channels=1, num_classes=3))
    np.testing.assert_array_equal(out["image"].numpy(), tf.cast(pixels, tf.float32).numpy() / 255.0)


# Encoded sources: ExampleGen's examples hold the image files; Transform decodes them with the image function.
import io  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from PIL import Image  # noqa: E402

from triplet_tfx.components import contract, images  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "serving"))


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("resize", ["stretch", "pad", "crop"])
def test_encoded_images_go_through_the_image_function(resize):
    rng = np.random.default_rng(1)
    files = [_png(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in [(6, 8, 3), (12, 5, 3), (6, 8)]]
    inputs = {"image": tf.constant([[f] for f in files]), "label": tf.constant([[0], [1], [1]], tf.int64)}
    config = _config(source="images:/unused", image_height=6, image_width=8, channels=3, num_classes=2, resize=resize)
    out = preprocessing.preprocessing_fn(inputs, config)
    expected = images.to_unit_floats(images.decode_to_pixels(tf.constant(files), (6, 8, 3), resize))
    np.testing.assert_array_equal(out["image"].numpy(), expected.numpy())
    assert out["label"].numpy().tolist() == [0, 1, 1]


@pytest.mark.slow
def test_class_name_vocabulary_through_tf_transform(tmp_path):
    """A real analysis pass (Beam's in-process runner) over train and eval examples: the vocabulary
    holds every class name, and contract.class_order gives the id -> name table the model carries."""
    import encoded_model
    import tensorflow_transform as tft

    from triplet_tfx.components.training import export

    config = encoded_model.encoded_config(height=6, width=8, num_classes=3)
    names = ["moth", "ant", "zebra", "ant"]  # "zebra": only in the eval split
    order = contract.class_order(names)
    examples = [
        encoded_model.encoded_example(_png(np.full((5 + i, 7, 3), 40 * i, np.uint8)), order.index(n), n)
        for i, n in enumerate(names)
    ]
    output = tft.TFTransformOutput(encoded_model.write_transform_graph(str(tmp_path), examples, config))
    vocabulary = [v.decode() for v in output.vocabulary_by_name(contract.CLASS_NAMES_VOCABULARY)]
    assert sorted(vocabulary) == ["ant", "moth", "zebra"] and vocabulary[0] == "ant"  # by frequency
    assert export.class_names(output, 3) == ["ant", "moth", "zebra"]
    transformed = output.transform_features_layer()(
        tf.io.parse_example(tf.constant(examples), {k: v for k, v in encoded_model.encoded_spec().items()})
    )
    assert transformed["label"].numpy().tolist() == [order.index(n) for n in names]
    assert set(transformed) == {"image", "label"}


@pytest.mark.slow
def test_integer_named_classes_keep_numeric_ids(tmp_path):
    """Folders named 0..10 (an integer-labelled images: source): ids in numeric order, names = ids."""
    import encoded_model
    import tensorflow_transform as tft

    from triplet_tfx.components.training import export

    names = [str(i) for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)]
    config = encoded_model.encoded_config(height=4, width=4, num_classes=11)
    examples = [
        encoded_model.encoded_example(_png(np.full((4, 4, 3), i, np.uint8)), int(n), n) for i, n in enumerate(names)
    ]
    output = tft.TFTransformOutput(encoded_model.write_transform_graph(str(tmp_path), examples, config))
    assert export.class_names(output, 11) == [str(i) for i in range(11)]


def test_raw_source_has_the_ids_as_class_names(tmp_path):
    import tensorflow_transform as tft
    import tiny_serving_model

    from triplet_tfx.components.data import data_sources
    from triplet_tfx.components.training import export

    examples = [data_sources.make_example(np.zeros((28, 28, 1), np.uint8), i) for i in range(3)]
    output = tft.TFTransformOutput(tiny_serving_model.write_transform_graph(str(tmp_path), examples))
    assert export.class_names(output, 10) == [str(i) for i in range(10)]


@pytest.mark.parametrize("source,analyze", [("mnist", None), ("images", ["train", "eval"])])
def test_transform_analyses_train_and_eval_for_encoded_sources(tmp_path, source, analyze):
    import json

    from triplet_tfx.pipeline import pipeline

    if source == "images":
        for name in ("cat", "dog"):
            os.makedirs(tmp_path / name)
            for i in range(3):
                Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name / f"{i}.png")
        source = f"images:{tmp_path}"
    config = PipelineConfig(data=DataConfig(source=source))
    transform = [c for c in pipeline.create_pipeline(config).components if c.id == "Transform"][0]
    splits = transform.exec_properties.get("splits_config")
    assert (json.loads(splits)["analyze"] if splits else None) == analyze
