"""Zero train/serve skew for encoded-image sources: a photo's embedding is the same whether it is sent
to `embed_images` as a file, to `serving_default` as ExampleGen's tf.Example (the evaluator's path),
read by the Trainer (its input pipeline: the Transform graph, then the network) or decoded by the
image function and sent to `embed_pixels`; and the class names travel with the model."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
import encoded_model  # noqa: E402

from triplet_tfx.components import contract, images, signatures  # noqa: E402
from triplet_tfx.components.contract import EMBEDDING_KEY  # noqa: E402
from triplet_tfx.components.serving import index  # noqa: E402
from triplet_tfx.components.training import trainer  # noqa: E402

pytestmark = pytest.mark.slow

NAMES = ["zebra", "ant", "moth"]  # class ids by contract.class_order: ant 0, moth 1, zebra 2


def graph_pixels(files, data) -> np.ndarray:
    """images.decode_to_pixels as the Transform graph and the SavedModel run it: traced, shapes unknown."""
    decode = tf.function(
        lambda x: images.decode_to_pixels(x, data.image_shape, data.resize),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    return decode(tf.constant(files)).numpy()


def _label(name: str) -> int:
    return contract.class_order(NAMES).index(name)


@pytest.fixture(scope="module", params=["stretch", "pad", "crop"])
def built(request, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp(f"encoded_{request.param}"))
    config = encoded_model.encoded_config(resize=request.param)
    files = encoded_model.photos()
    names = [NAMES[i % 3] for i in range(len(files))]
    examples = [
        encoded_model.encoded_example(f, _label(n), n, f"photo{i}") for i, (f, n) in enumerate(zip(files, names))
    ]
    transform_output = encoded_model.write_transform_graph(folder, examples, config)
    model, path = encoded_model.export_untrained(folder, transform_output, config)
    return {
        "config": config,
        "files": files,
        "examples": examples,
        "names": names,
        "folder": folder,
        "transform_output": transform_output,
        "model": model,
        "path": path,
        "loaded": tf.saved_model.load(path),
    }


def _trainer_input_embeddings(built) -> np.ndarray:
    """The Trainer's path: gzipped tf.Examples read by trainer.transformed_batches, fed to the network."""
    import tensorflow_transform as tft

    records = os.path.join(built["folder"], "train.tfrecord.gz")
    with tf.io.TFRecordWriter(records, options="GZIP") as writer:
        for example in built["examples"]:
            writer.write(example)
    dataset = trainer.transformed_batches([records], tft.TFTransformOutput(built["transform_output"])).unbatch()
    pixels, labels = zip(*[(image.numpy(), int(label)) for image, label in dataset])
    assert list(labels) == [_label(n) for n in built["names"]]
    return np.asarray(built["model"](np.stack(pixels), training=False))


def test_embed_images_equals_serving_default_and_trainer_input(built):
    loaded = built["loaded"]
    by_file = loaded.signatures[contract.EMBED_IMAGES_SIGNATURE](images=tf.constant(built["files"]))[
        EMBEDDING_KEY
    ].numpy()
    by_example = loaded.signatures[contract.SERVING_SIGNATURE](examples=tf.constant(built["examples"]))[
        EMBEDDING_KEY
    ].numpy()
    np.testing.assert_allclose(by_file, by_example, atol=1e-6, rtol=0)
    np.testing.assert_allclose(by_file, _trainer_input_embeddings(built), atol=1e-6, rtol=0)
    assert by_file.shape == (len(built["files"]), built["config"].train.embedding_dim)


def test_embed_pixels_equals_embed_images_of_the_decoded_photo(built):
    data = built["config"].data
    loaded = built["loaded"]
    pixels = graph_pixels(built["files"], data)
    by_pixels = loaded.signatures[contract.EMBED_PIXELS_SIGNATURE](pixels=pixels)[EMBEDDING_KEY].numpy()
    by_file = loaded.signatures[contract.EMBED_IMAGES_SIGNATURE](images=tf.constant(built["files"]))[
        EMBEDDING_KEY
    ].numpy()
    np.testing.assert_allclose(by_pixels, by_file, atol=1e-6, rtol=0)


def test_transform_output_is_the_image_function(built):
    """The Trainer's pixels are images.decode_to_pixels' at the training shape, /255."""
    import tensorflow_transform as tft

    data = built["config"].data
    layer = tft.TFTransformOutput(built["transform_output"]).transform_features_layer()
    spec = {contract.IMAGE_KEY: encoded_model.encoded_spec()[contract.IMAGE_KEY]}
    got = layer(tf.io.parse_example(tf.constant(built["examples"]), spec))[contract.IMAGE_KEY].numpy()
    expected = graph_pixels(built["files"], data) / 255.0
    np.testing.assert_allclose(got, expected, atol=1e-7, rtol=0)


def test_serving_default_needs_only_the_image_feature(built):
    bare = [
        tf.train.Example(
            features=tf.train.Features(
                feature={contract.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[f]))}
            )
        ).SerializeToString()
        for f in built["files"][:3]
    ]
    serve = built["loaded"].signatures[contract.SERVING_SIGNATURE]
    np.testing.assert_allclose(
        serve(examples=tf.constant(bare))[EMBEDDING_KEY].numpy(),
        serve(examples=tf.constant(built["examples"][:3]))[EMBEDDING_KEY].numpy(),
        atol=1e-7,
    )


def test_bad_images_name_the_signature_input(built):
    function = built["loaded"].signatures[contract.EMBED_IMAGES_SIGNATURE]
    with pytest.raises(tf.errors.InvalidArgumentError, match="images: not a PNG, JPEG, GIF or BMP image at index"):
        function(images=tf.constant([built["files"][0], b"GIF7 not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images: empty string"):
        function(images=tf.constant([b""]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images: empty batch"):
        function(images=tf.constant([], tf.string))


def test_class_names_travel_with_the_model_and_search(built, tmp_path):
    assert signatures.read_class_names(built["path"]) == ["ant", "moth", "zebra"]
    loaded = built["loaded"]
    embeddings = loaded.signatures[contract.SERVING_SIGNATURE](examples=tf.constant(built["examples"]))[
        EMBEDDING_KEY
    ].numpy()
    labels = np.array([_label(n) for n in built["names"]])
    served = str(tmp_path / "served")
    index.build_serving_model(built["path"], index.reference_ids("eval", len(labels)), labels, embeddings, served)
    assert signatures.read_class_names(served) == ["ant", "moth", "zebra"]
    out = tf.saved_model.load(served).signatures[contract.SEARCH_SIGNATURE](
        images=tf.constant(built["files"][:4]), k=tf.constant(3)
    )
    assert out[contract.CLASS_NAMES_OUTPUT].dtype == tf.string
    assert out[contract.CLASS_NAMES_OUTPUT].shape == (4, 3)
    got_labels = out[contract.LABELS_OUTPUT].numpy()
    assert [[n.decode() for n in row] for row in out[contract.CLASS_NAMES_OUTPUT].numpy()] == [
        [["ant", "moth", "zebra"][i] for i in row] for row in got_labels
    ]
    assert set(out) == {
        contract.IDS_OUTPUT,
        contract.LABELS_OUTPUT,
        contract.DISTANCES_OUTPUT,
        contract.CLASS_NAMES_OUTPUT,
    }
