"""End to end, unseen classes: the real pipeline trains on MNIST 0-4 and is scored on 5-9
(200 examples per split, 5 steps, the `strided` network)."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv

from triplet_tfx.components.config import DataConfig, EvalConfig, PipelineConfig, TrainConfig
from triplet_tfx.components.data import data_sources
from triplet_tfx.components.examples_io import parse_examples
from triplet_tfx.pipeline import cli, summary as summary_module

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def unseen_run(tmp_path_factory):
    config = PipelineConfig(
        output_root=str(tmp_path_factory.mktemp("unseen")),
        data=DataConfig(max_examples=200, train_classes="0-4", eval_classes="5-9"),
        train=TrainConfig(max_steps=5, network="strided"),
        eval=EvalConfig(lower_bounds={"precision_at_1": 0.0}, plot="pca"),
    )
    return config, cli.run_locally(config)


def split_labels(config, component, split):
    files = glob.glob(os.path.join(config.pipeline_root, component, "*", "*", f"Split-{split}", "*.gz"))
    assert files, (component, split)
    return parse_examples([r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")])[0]


def test_each_split_holds_only_its_classes(unseen_run):
    config, summary = unseen_run
    assert set(summary.executions.values()) == {"COMPLETE"}
    train_labels, test_labels = (data_sources.load_mnist()[s][1][:200] for s in ("train", "test"))
    np.testing.assert_array_equal(
        np.sort(split_labels(config, "SourceExampleGen", "train")), np.sort(train_labels[train_labels < 5])
    )
    np.testing.assert_array_equal(
        np.sort(split_labels(config, "SourceExampleGen", "eval")), np.sort(test_labels[test_labels >= 5])
    )
    # The statistics (and so the schema) are those of the filtered splits.
    for split, (low, high) in (("train", (0, 4)), ("eval", (5, 9))):
        stats = tfdv.load_stats_binary(
            glob.glob(
                os.path.join(
                    config.pipeline_root, "StatisticsGen", "statistics", "*", f"Split-{split}", "FeatureStats.pb"
                )
            )[0]
        )
        label = next(f for f in stats.datasets[0].features if f.path.step == ["label"])
        assert (label.num_stats.min, label.num_stats.max) == (low, high)


def test_evaluator_says_the_classes_were_unseen(unseen_run):
    config, summary = unseen_run
    metrics = summary.metrics
    test_labels = data_sources.load_mnist()["test"][1][:200]
    assert metrics["classes_seen_in_training"] is False
    assert (metrics["train_classes"], metrics["eval_classes"]) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert metrics["protocol"] == "leave_one_out"
    store = summary_module.open_store(config.metadata_path)
    evaluation = next(a for a in store.get_artifacts_by_type("ModelEvaluation") if a.uri == summary.evaluation_dir)
    assert evaluation.custom_properties["classes_seen_in_training"].int_value == 0
    assert metrics["num_queries"] == int((test_labels >= 5).sum())
    assert sorted(metrics["per_class_precision_at_1"]) == ["5", "6", "7", "8", "9"]  # original class ids
    line = "Unseen classes: eval classes 5-9 were not in training (train classes 0-4)"
    assert line in summary.format()
    with open(os.path.join(summary.evaluation_dir, "report.md")) as f:
        assert line in f.read()


def test_unseen_class_queries_are_answered_no_match_at_the_reported_rate(unseen_run):
    import io

    from PIL import Image

    _, summary = unseen_run
    rate = summary.metrics["open_set_rejection_rate"]
    assert 0.0 <= rate <= 1.0
    assert f"{rate:.1%} of their queries answered 'no match' by the served index" in summary.format()
    images, labels = data_sources.load_mnist()["test"]
    unseen = [i for i in range(200) if labels[i] >= 5]  # the eval split: the first 200 of classes 5-9
    pngs = []
    for i in unseen:
        pngs.append(io.BytesIO())
        Image.fromarray(images[i][..., 0]).save(pngs[-1], "PNG")
    match = tf.saved_model.load(summary.pushed_to).signatures["match"]
    answer = match(images=tf.constant([f.getvalue() for f in pngs]))
    assert set(answer["labels"].numpy().tolist()) <= {0, 1, 2, 3, 4}  # the index holds the train classes only
    rejected = 1.0 - answer["matched"].numpy().mean()
    assert rejected == pytest.approx(rate, abs=2 / len(unseen))


def test_pushed_strided_model_serves_embeddings(unseen_run):
    _, summary = unseen_run
    assert summary.blessed is True and summary.pushed_to
    images, labels = data_sources.load_mnist()["test"]
    examples = tf.constant([data_sources.make_example(images[i], labels[i]) for i in range(4)])
    embeddings = tf.saved_model.load(summary.pushed_to).signatures["serving_default"](examples=examples)["embedding"]
    np.testing.assert_allclose(np.linalg.norm(embeddings.numpy(), axis=1), 1.0, rtol=1e-5)
