"""End to end, photos as users have them: a folder of named classes holding JPEGs and PNGs of many
sizes (a grey image, a CMYK JPEG, a PNG with alpha and an EXIF-rotated JPEG among them) through
the real pipeline, with the `strided` network and with a Keras Applications backbone."""

import dataclasses
import glob
import os
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components import contract
from triplet_tfx.components.config import DataConfig, EvalConfig, PipelineConfig, TrainConfig
from triplet_tfx.pipeline import cli

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "data"))
from photo_collection import CLASSES, make_photo_collection  # noqa: E402

pytestmark = pytest.mark.slow
COMPONENTS = {
    "SourceExampleGen",
    "StatisticsGen",
    "SchemaGen",
    "ExampleValidator",
    "AnomalyGate",
    "Transform",
    "Trainer",
    "BaselineModelResolver",
    "EmbeddingEvaluator",
    "ServingModelBuilder",
    "Pusher",
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("photos") / "collection")
    return folder, make_photo_collection(folder, per_class=12)


def photo_config(root, folder, **train) -> PipelineConfig:
    return PipelineConfig(
        output_root=str(root),
        data=DataConfig(
            source=f"images:{folder}",
            image_height=32,
            image_width=32,
            channels=3,
            num_classes=len(CLASSES),
            resize="pad",
        ),
        train=TrainConfig(
            **{"network": "strided", "batch_size": 16, "max_steps": 40, "learning_rate": 3e-3, "dropout": 0.0, **train}
        ),
        eval=EvalConfig(lower_bounds={"precision_at_1": 0.0}, plot="pca"),
    )


@pytest.fixture(scope="module")
def photo_run(photos, tmp_path_factory):
    config = photo_config(tmp_path_factory.mktemp("photo_run"), photos[0])
    return config, cli.run_locally(config)


def split_examples(config, split):
    files = glob.glob(os.path.join(config.pipeline_root, "SourceExampleGen", "examples", "*", f"Split-{split}", "*.gz"))
    return [
        tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
    ]


def feature(example, key):
    value = example.features.feature[key]
    return value.bytes_list.value[0] if value.bytes_list.value else value.int64_list.value[0]


def test_every_component_ran_and_the_model_was_pushed(photo_run):
    _, summary = photo_run
    assert summary.executions == {name: "COMPLETE" for name in COMPONENTS}
    assert summary.blessed is True and summary.pushed_to


def test_examples_hold_the_files_as_read_with_their_class_names(photo_run, photos):
    config, _ = photo_run
    by_bytes = {}
    for photo in photos[1]:
        with open(photo.path, "rb") as f:
            by_bytes[f.read()] = photo
    examples = split_examples(config, "train") + split_examples(config, "eval")
    assert len(examples) == len(photos[1])
    for example in examples:
        photo = by_bytes[feature(example, contract.IMAGE_KEY)]  # the encoded file, byte for byte
        assert feature(example, contract.CLASS_NAME_KEY).decode() == photo.class_name
        assert feature(example, contract.LABEL_KEY) == sorted(CLASSES).index(photo.class_name)
        assert (feature(example, contract.IMAGE_WIDTH_KEY), feature(example, contract.IMAGE_HEIGHT_KEY)) == (
            photo.width,
            photo.height,
        )
        assert feature(example, contract.IMAGE_FORMAT_KEY).decode() == photo.format


def test_served_embeddings_equal_the_evaluators_for_the_same_files(photo_run, photos):
    """Zero train/serve skew: the pushed model's embed_images on the files as a client sends them
    equals what the evaluator embedded for the same examples (the Projector's vecs.tsv)."""
    config, summary = photo_run
    examples = split_examples(config, "eval")
    eval_images = [feature(e, contract.IMAGE_KEY) for e in examples]
    model = tf.saved_model.load(summary.pushed_to)
    served = model.signatures["embed_images"](images=tf.constant(eval_images))["embedding"].numpy()
    # The evaluator's path: serving_default on the stored tf.Examples...
    evaluated = model.signatures["serving_default"](examples=tf.constant([e.SerializeToString() for e in examples]))[
        "embedding"
    ].numpy()
    np.testing.assert_allclose(served, evaluated, atol=1e-6)
    # ...whose embeddings the Projector bundle holds (printed with 6 decimals).
    vectors = np.loadtxt(
        os.path.join(summary.evaluation_dir, "tensorboard", "vecs.tsv"), delimiter="\t", dtype=np.float32
    )
    assert served.shape == vectors.shape == (len(eval_images), 256)
    np.testing.assert_allclose(served, vectors, atol=1e-5)
    kinds = {p.kind for p in photos[1]}
    assert {"grey", "cmyk", "rgba", "exif6"} <= kinds


def test_search_answers_with_class_names(photo_run, photos):
    config, summary = photo_run
    train = split_examples(config, "train")
    queries = [feature(e, contract.IMAGE_KEY) for e in train[:6]]
    result = tf.saved_model.load(summary.pushed_to).signatures["search"](images=tf.constant(queries), k=tf.constant(3))
    names = result["class_names"].numpy()
    for i, example in enumerate(train[:6]):  # an indexed photo finds itself first
        assert result["ids"].numpy()[i, 0].decode() == f"train/{i}"
        assert result["distances"].numpy()[i, 0] < 1e-3
        assert names[i, 0].decode() == feature(example, contract.CLASS_NAME_KEY).decode()
    assert set(n.decode() for n in names.ravel()) <= set(CLASSES)


def test_the_report_and_projector_show_class_names(photo_run):
    _, summary = photo_run
    with open(os.path.join(summary.evaluation_dir, "tensorboard", "meta.tsv")) as f:
        meta = f.read()
    with open(os.path.join(summary.evaluation_dir, "report.html")) as f:
        report = f.read()
    for name in CLASSES:
        assert name in meta and name in report


def test_a_backbone_trains_and_serves_through_the_whole_pipeline(photos, tmp_path):
    """MobileNetV3Small with random weights, on a copy of the photos with a truncated JPEG that
    --on-bad-image skip leaves out, counts and lists."""
    folder = str(tmp_path / "collection")
    shutil.copytree(photos[0], folder)
    broken = os.path.join(folder, CLASSES[0], "broken.jpg")
    with open(next(p.path for p in photos[1] if p.format == "jpeg"), "rb") as f:
        truncated = f.read()[:200]
    with open(broken, "wb") as f:
        f.write(truncated)
    config = photo_config(
        tmp_path / "backbone_run",
        folder,
        network="mobilenet_v3_small",
        backbone_weights="none",
        max_steps=3,
        batch_size=8,
    )
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, on_bad_image="skip"))
    summary = cli.run_locally(config)
    assert summary.executions == {name: "COMPLETE" for name in COMPONENTS}
    assert summary.skipped_images.startswith("1 image(s) that cannot be used were left out (--on-bad-image skip)")
    listed = summary.skipped_images.rsplit("listed in ", 1)[1]
    with open(listed) as f:
        assert f.read().startswith(broken)
    assert "Skipped images: 1 image(s)" in summary.format()
    served = tf.saved_model.load(summary.pushed_to)
    assert {"serving_default", "embed_images", "embed_pixels", "search"} <= set(served.signatures)
    files = []
    for photo in photos[1][:2]:
        with open(photo.path, "rb") as f:
            files.append(f.read())
    embedding = served.signatures["embed_images"](images=tf.constant(files))["embedding"].numpy()
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    result = served.signatures["search"](images=tf.constant(files), k=tf.constant(2))
    assert set(n.decode() for n in result["class_names"].numpy().ravel()) <= set(CLASSES)
