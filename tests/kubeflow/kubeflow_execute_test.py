"""The compiled Kubeflow spec is executable: every task's container command, from the spec,
through TFX's own KFP v2 entrypoint, on tiny data (200 examples per split, 5 steps).

tests/kfp_local_executor.py plays the KFP driver/launcher (ExecutorInput with local artifact
URIs, `{{$}}` resolved, outputs handed downstream); only the container runtime is missing:
the commands run with this interpreter instead of inside the images.
"""

import json
import os

import numpy as np
import pytest
from kfp_local_executor import run_pipeline_spec

from triplet_tfx.kubeflow import runner
from triplet_tfx.pipeline import cli

pytestmark = pytest.mark.slow

CONTAINER_TASKS = {
    "SourceExampleGen",
    "StatisticsGen",
    "SchemaGen",
    "ExampleValidator",
    "AnomalyGate",
    "Transform",
    "Trainer",
    "EmbeddingEvaluator",
    "ServingModelBuilder",
    "Pusher",
}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kfp-exec")
    serving = tmp / "serving"
    args = cli.build_parser().parse_args(
        [
            "compile",
            "--output-root",
            str(tmp / "out"),
            "--pipeline-root",
            "gs://unused-bucket/root",
            "--serving-dir",
            str(serving),
            "--max-examples",
            "200",
            "--max-steps",
            "5",
            "--min-precision-at-1",
            "0.05",
            "--plot",
            "pca",
        ]
    )
    package = runner.compile_pipeline(cli.config_from_args(args), str(tmp / "package"))
    outputs = run_pipeline_spec(package.yaml_path, str(tmp / "root"), timeout_per_task=600)
    return outputs, serving


def only(outputs, task, key):
    (artifact,) = outputs[task][key]
    return artifact


def test_every_container_task_ran_and_reported_its_outputs(executed):
    outputs, _ = executed
    assert CONTAINER_TASKS <= set(outputs)
    for task in CONTAINER_TASKS:
        for key, artifacts in outputs[task].items():
            assert len(artifacts) == 1 and os.path.isdir(artifacts[0].uri), (task, key)


def test_examples_and_transform_graph(executed):
    outputs, _ = executed
    examples = only(outputs, "SourceExampleGen", "examples")
    assert json.loads(examples.metadata["split_names"]) == ["train", "eval"]
    # What TFX's ExampleGen records, and its file names: what StatisticsGen and Transform read.
    assert examples.metadata["payload_format"] == "FORMAT_TF_EXAMPLE"
    assert examples.metadata["file_format"] == "tfrecords_gzip"
    for split in ("train", "eval"):
        files = os.listdir(os.path.join(examples.uri, f"Split-{split}"))
        assert files and all(name.startswith("data_tfrecord-") and name.endswith(".gz") for name in files)
    graph = only(outputs, "Transform", "transform_graph")
    assert os.path.isdir(os.path.join(graph.uri, "transform_fn"))
    assert os.path.isdir(os.path.join(graph.uri, "transformed_metadata"))


def test_model_is_blessed_and_pushed(executed):
    import tensorflow as tf

    outputs, serving = executed
    model = only(outputs, "Trainer", "model")
    assert os.path.isfile(os.path.join(model.uri, "Format-Serving", "saved_model.pb"))
    blessing = only(outputs, "EmbeddingEvaluator", "blessing")
    assert blessing.metadata["blessed"] == 1
    assert os.path.isfile(os.path.join(blessing.uri, "BLESSED"))
    evaluation = only(outputs, "EmbeddingEvaluator", "evaluation")
    assert evaluation.metadata["precision_at_1"] >= 0.05
    pushed = only(outputs, "Pusher", "pushed_model")
    assert pushed.metadata["pushed"] == 1
    destination = pushed.metadata["pushed_destination"]
    assert destination.startswith(os.path.join(str(serving), "triplet_mnist"))
    loaded = tf.saved_model.load(destination)
    from triplet_tfx.components.data import data_sources

    images, labels = data_sources.load_mnist()["test"]
    batch = tf.constant([data_sources.make_example(images[i], labels[i]) for i in range(4)])
    embeddings = loaded.signatures["serving_default"](examples=batch)["embedding"].numpy()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    assert set(loaded.signatures) == {"serving_default", "embed_images", "embed_pixels", "search", "match"}
    assert loaded.reference_embeddings.shape == (200, 256)  # the train split, the default index
