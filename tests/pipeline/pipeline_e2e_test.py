"""End to end: the real pipeline under LocalDagRunner on 2,000 MNIST examples, 100 steps, served with an
approximate (ivf) search index (the exact index is served end to end by photos_e2e_test and
kubeflow_execute_test)."""

import gc
import os

import numpy as np
import pytest
import tensorflow as tf

from triplet_tfx.components.config import DataConfig, EvalConfig, PipelineConfig, ServingConfig, TrainConfig
from triplet_tfx.components.data import data_sources
from triplet_tfx.pipeline import cli, summary

pytestmark = pytest.mark.slow

COMPONENTS = [
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
]


def small_config(root, min_precision_at_1=0.5, max_steps=100) -> PipelineConfig:
    return PipelineConfig(
        output_root=str(root),
        data=DataConfig(max_examples=2000),
        train=TrainConfig(max_steps=max_steps),
        eval=EvalConfig(lower_bounds={"precision_at_1": min_precision_at_1}, plot="pca"),
        serving=ServingConfig(index="ivf", index_lists=16),
    )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    config = small_config(root)
    return config, cli.run_locally(config)


def pushed_versions(config):
    return sorted(os.listdir(config.serving_model_dir)) if os.path.isdir(config.serving_model_dir) else []


def test_every_component_executed(first_run):
    _, summary = first_run
    assert gc.get_freeze_count() == 0  # the run unfroze what its imports froze
    assert summary.executions == {name: "COMPLETE" for name in COMPONENTS}
    assert summary.blessed is True
    assert summary.metrics["num_queries"] == 2000
    assert summary.metrics["precision_at_1"] >= 0.5


def test_pushed_model_serves_unit_norm_embeddings(first_run):
    config, summary = first_run
    versions = pushed_versions(config)
    assert len(versions) == 1 and summary.pushed_to == os.path.join(config.serving_model_dir, versions[0])
    loaded = tf.saved_model.load(summary.pushed_to)
    assert set(loaded.signatures) == {
        "serving_default",
        "embed_images",
        "embed_pixels",
        "search",
        "search_with_nprobe",
        "match",
    }
    # The index: the train split, pushed with the model as 16 lists of int8 codes; 4 lists probed by default.
    assert loaded.reference_ids.shape == (2000,) and loaded.ivf.vectors.shape == (2000, 256)
    assert loaded.ivf.vectors.dtype == tf.int8 and int(loaded.nprobe.numpy()) == 4
    assert summary.search_index.startswith("2000 train references, built in ")
    assert "; ivf, 16 lists, nprobe 4, recall@10 against exact search 0." in summary.search_index
    # The evaluator measured the same index (same settings, same seed) on all 2,000 eval queries.
    assert 0.8 < summary.metrics["index_recall_at_10"] <= 1.0
    images, labels = data_sources.load_mnist()["test"]
    examples = tf.constant([data_sources.make_example(images[i], labels[i]) for i in range(8)])
    embeddings = loaded.signatures["serving_default"](examples=examples)["embedding"].numpy()
    assert embeddings.shape == (8, 256)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    # Only the network's weights travel: no optimizer state (Adam slots, iteration counter).
    names = [v.name for v in loaded.embedding_model.variables if "seed_generator" not in v.name]  # dropout's RNG
    assert sorted(n.split("/")[-1] for n in names) == ["bias:0"] * 3 + ["kernel:0"] * 3, names


def test_pushed_model_embeds_images_as_the_evaluator_did(first_run):
    import io

    from PIL import Image

    from triplet_tfx.components.examples_io import parse_examples

    config, first = first_run
    (examples,) = [
        a
        for a in summary.open_store(config.metadata_path).get_artifacts_by_type("Examples")
        if "SourceExampleGen" in a.uri
    ]
    files = sorted(tf.io.gfile.glob(os.path.join(examples.uri, "Split-eval", "*")))  # as the evaluator reads them
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(50)]
    labels, images = parse_examples(serialized, config.data.image_shape)
    pngs = []
    for image in images:
        pngs.append(io.BytesIO())
        Image.fromarray(image[..., 0]).save(pngs[-1], "PNG")
    loaded = tf.saved_model.load(first.pushed_to)
    embedded = loaded.signatures["embed_images"](images=tf.constant([f.getvalue() for f in pngs]))["embedding"]
    scored = np.loadtxt(os.path.join(first.evaluation_dir, "tensorboard", "vecs.tsv"), delimiter="\t")[:50]
    np.testing.assert_allclose(embedded.numpy(), scored, atol=2e-5)  # vecs.tsv holds 6 decimals
    from_pixels = loaded.signatures["embed_pixels"](pixels=tf.constant(images))["embedding"]
    np.testing.assert_allclose(from_pixels.numpy(), embedded.numpy(), atol=1e-6)
    found = loaded.signatures["search"](images=tf.constant([f.getvalue() for f in pngs]), k=tf.constant(1))
    assert (found["labels"].numpy()[:, 0] == labels).mean() > 0.5
    every_list = loaded.signatures["search_with_nprobe"](
        images=tf.constant([f.getvalue() for f in pngs]), k=tf.constant(1), nprobe=tf.constant(16)
    )
    assert (every_list["labels"].numpy()[:, 0] == labels).mean() > 0.5
    with pytest.raises(tf.errors.InvalidArgumentError, match="nprobe must be at most the number of lists"):
        loaded.signatures["search_with_nprobe"](images=tf.constant(pngs[0].getvalue())[None], k=1, nprobe=17)


def test_the_match_threshold_is_calibrated_and_served(first_run):
    import csv

    _, first = first_run
    metrics = first.metrics
    threshold = metrics["match_threshold"]
    assert metrics["calibration"]["match_precision"] == 0.95 and threshold > 0
    assert os.path.isfile(os.path.join(first.evaluation_dir, "match_threshold.png"))
    with open(os.path.join(first.evaluation_dir, "calibration.csv")) as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    assert max(r["threshold"] for r in rows if r["precision"] >= 0.95) == pytest.approx(threshold, rel=1e-5)
    # Brute force on the scored embeddings (leave-one-out among the eval queries): the queries whose
    # nearest neighbour lies within the threshold are right at least 95% of the time.
    tb = os.path.join(first.evaluation_dir, "tensorboard")
    vectors = np.loadtxt(os.path.join(tb, "vecs.tsv"), delimiter="\t")
    with open(os.path.join(tb, "meta.tsv")) as f:
        labels = np.array([line.split("\t")[0] for line in f.read().splitlines()[1:]])
    distances = np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(axis=1)
    within = distances[np.arange(len(labels)), nearest] <= threshold + 1e-4
    assert within.sum() > 100 and (labels[nearest] == labels)[within].mean() >= 0.95 - 0.01
    assert first.search_index.endswith(f"; match threshold {threshold:.4g}")
    loaded = tf.saved_model.load(first.pushed_to)
    assert float(loaded.match_threshold.numpy()) == pytest.approx(threshold, rel=1e-6)


def test_projector_files_are_written(first_run):
    _, summary = first_run
    projector = os.path.join(summary.evaluation_dir, "tensorboard")
    assert [f for f in os.listdir(projector) if f.startswith("events.out.tfevents")]  # a run TensorBoard lists
    vecs = np.loadtxt(os.path.join(projector, "vecs.tsv"), delimiter="\t")
    assert vecs.shape == (2000, 256)
    with open(os.path.join(projector, "meta.tsv")) as f:
        assert len(f.read().splitlines()) == 2001  # a header, then one row per embedding


def test_second_run_hits_the_cache(first_run):
    config, _ = first_run
    before = pushed_versions(config)
    summary = cli.run_locally(config)
    assert {name: summary.executions[name] for name in COMPONENTS[:7]} == {name: "CACHED" for name in COMPONENTS[:7]}
    # The evaluator sees a new input, the baseline (this very model, pushed by the first run),
    # and does not bless it a second time: nothing is pushed again; the summary says it is blessed.
    assert summary.already_pushed and summary.blessed is True
    assert summary.blessing_message.endswith("; nothing new to push")
    assert "Model already in production (blessed and pushed by an earlier run): " in summary.format()
    assert "NOT BLESSED" not in summary.format()
    assert summary.pushed_to is None and summary.search_index == ""  # no index built for an unblessed model
    assert pushed_versions(config) == before
    # ...and does not evaluate it again: the first run's result for (model, examples, settings) is reused.
    with open(summary.log_path) as f:
        log = f.read()
    assert "Reusing the evaluation of candidate model" in log and "Embedding with model" not in log
    first_metrics = {k: v for k, v in first_run[1].metrics.items() if k not in ("blessed", "reasons")}
    for name in ("confusion_matrix_1nn.png", "worst_retrievals.png", "embedding_2d.png"):  # copied, not redrawn
        with (
            open(os.path.join(first_run[1].evaluation_dir, name), "rb") as a,
            open(os.path.join(summary.evaluation_dir, name), "rb") as b,
        ):
            assert a.read() == b.read(), name
    assert {k: v for k, v in summary.metrics.items() if k not in ("blessed", "reasons")} == first_metrics


def test_impossible_threshold_pushes_nothing(first_run):
    config, _ = first_run
    before = pushed_versions(config)
    summary = cli.run_locally(small_config(config.output_root, min_precision_at_1=0.9999))
    assert summary.executions["Trainer"] == "CACHED"  # only the evaluator's parameters changed
    assert summary.executions["EmbeddingEvaluator"] == "COMPLETE"
    assert summary.blessed is False and "< threshold 0.9999" in summary.blessing_message
    assert summary.pushed_to is None
    assert pushed_versions(config) == before  # the earlier push is untouched


def test_weaker_candidate_loses_against_the_blessed_baseline(first_run):
    config, first = first_run
    before = pushed_versions(config)
    summary = cli.run_locally(small_config(config.output_root, max_steps=1))
    assert summary.executions["Trainer"] == "COMPLETE"
    baseline = summary.metrics["baseline"]
    assert baseline["map_at_r"] == pytest.approx(first.metrics["map_at_r"], abs=1e-6)  # the first run's model
    assert summary.metrics["map_at_r"] < baseline["map_at_r"] - 0.005
    assert summary.blessed is False and "map_at_r" in summary.blessing_message
    assert "regression beyond tolerance" in summary.blessing_message
    assert summary.pushed_to is None and pushed_versions(config) == before
    evaluation = summary.evaluation_dir
    names = (
        "report.md",
        "report.html",
        "embedding_2d.png",
        "per_class_precision_at_1.png",
        "worst_retrievals.png",
        "worst_retrievals_baseline.png",
        "confusion_matrix_1nn.png",
    )
    for name in names:
        assert os.path.getsize(os.path.join(evaluation, name)) > 0, name
    with open(os.path.join(evaluation, "report.html")) as f:
        page = f.read()
    assert all(f"src='{name}'" in page for name in names[2:])
    # The 1-NN confusion matrix agrees with Precision@1: its diagonal holds the correct queries.
    counts = np.array(summary.metrics["confusion_1nn"]["counts"])
    assert counts.sum() == 2000 and np.trace(counts) / 2000 == pytest.approx(summary.metrics["precision_at_1"])
    # The baseline was evaluated when it was the candidate (first run): reused, not recomputed.
    with open(summary.log_path) as f:
        assert "Reusing the evaluation of baseline model" in f.read()
    with open(os.path.join(evaluation, "report.md")) as f:
        assert "baseline" in f.read().lower()


def test_metrics_are_recorded_in_ml_metadata(first_run):
    config, first = first_run
    store = summary.open_store(config.metadata_path)
    evaluations = [a for a in store.get_artifacts_by_type("ModelEvaluation") if a.uri == first.evaluation_dir]
    assert len(evaluations) == 1
    properties = evaluations[0].custom_properties
    assert properties["precision_at_1"].double_value == pytest.approx(first.metrics["precision_at_1"])
    assert properties["map_at_r"].double_value == pytest.approx(first.metrics["map_at_r"])


def test_output_root_of_another_pipeline_is_refused(first_run, capsys):
    config, _ = first_run
    code = cli.main(["run", "--output-root", config.output_root, "--pipeline-name", "other"])
    assert code == 2
    assert f"--output-root {config.output_root} holds the runs of pipeline 'triplet-mnist'" in capsys.readouterr().err


def test_runs_lists_this_roots_runs_from_ml_metadata(first_run, capsys):
    config, first = first_run
    # One more run, with a bound no other run used: only the evaluator runs, on the model already pushed.
    cli.run_locally(small_config(config.output_root, min_precision_at_1=0.42))
    capsys.readouterr()
    assert cli.main(["runs", "--output-root", config.output_root]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["#", "run", "(start", "time)"]
    rows = {line.split()[1]: line for line in lines[1:]}
    first_row = rows[first.run_id]
    assert first_row.split()[:5] == ["1", first.run_id, "11", "0", "0"]  # ran 11 (resolver included), cached 0
    assert f"{first.metrics['precision_at_1']:.4f}" in first_row and "(first run)" in first_row
    assert os.path.basename(first.pushed_to) in first_row and " yes " in first_row
    last = lines[-1]
    assert "eval.lower_bounds" in last and "0.42}" in last and " yes (already pushed) " in last
    assert cli.main(["runs", "--output-root", config.output_root, "show", "1"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"#1: Run {first.run_id}:") and "train.max_steps = 100" in shown
    assert f"Pushed model: {first.pushed_to}" in shown
    assert cli.main(["runs", "--output-root", config.output_root, "show", "no-such-run"]) == 2
