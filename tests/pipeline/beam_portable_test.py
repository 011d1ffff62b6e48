"""The data components on Beam's portability framework, as Flink, Spark and Dataflow run them.

Beam's own local job service (`apache_beam.runners.portability.local_job_service_main`) and an
external SDK worker pool (`apache_beam.runners.worker.worker_pool_main`) run as separate
processes on 127.0.0.1; `--beam-runner portable` sends ExampleGen, StatisticsGen and Transform
to them over the Job API, and the pool's SDK workers (more processes, started with the `python`
first on PATH: this virtual environment) run the project's code. The outputs must equal those of
the default in-process runner.
"""

import collections
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import statistics_pb2

from triplet_tfx.components.config import BeamConfig, DataConfig, PipelineConfig
from triplet_tfx.pipeline import cli, portable_beam

pytestmark = pytest.mark.slow

EXAMPLES_PER_SPLIT = 40
SPLITS = ("train", "eval")
DATA_COMPONENT_IDS = ("SourceExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "AnomalyGate", "Transform")


@pytest.fixture(scope="module")
def job_service_and_worker_pool(tmp_path_factory):
    logs = tmp_path_factory.mktemp("beam-services")
    with portable_beam.local_job_service_and_worker_pool(str(logs)) as beam:
        yield beam, logs


def run_data_components(root, beam: BeamConfig) -> PipelineConfig:
    config = PipelineConfig(output_root=str(root), beam=beam, data=DataConfig(max_examples=EXAMPLES_PER_SPLIT))
    result = cli.run_locally(config, data_only=True)
    assert result.executions == {name: "COMPLETE" for name in DATA_COMPONENT_IDS}
    return config


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory, job_service_and_worker_pool):
    beam, logs = job_service_and_worker_pool
    local = run_data_components(tmp_path_factory.mktemp("local"), BeamConfig())
    portable = run_data_components(tmp_path_factory.mktemp("portable"), beam)
    return local, portable, logs


def output_dir(config, component, key):
    (path,) = glob.glob(os.path.join(config.pipeline_root, component, key, "*"))
    return path


def read_records(folder):
    files = sorted(glob.glob(os.path.join(folder, "*.gz")))
    assert files, folder
    return [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_the_job_service_and_the_pools_workers_did_the_work(both_runs):
    _, _, logs = both_runs
    job_log = (logs / portable_beam.JOB_SERVICE_LOG).read_text()
    pool_log = (logs / portable_beam.WORKER_POOL_LOG).read_text()
    # One Beam job each for ExampleGen and StatisticsGen, at least one for Transform.
    assert job_log.count("with state DONE") >= 3, job_log[-3000:]
    assert pool_log.count("Starting worker with command") >= 3, pool_log[-3000:]


def test_example_counts_per_split_are_equal(both_runs):
    local, portable, _ = both_runs
    for split in SPLITS:
        counts = [
            len(read_records(os.path.join(output_dir(c, "SourceExampleGen", "examples"), f"Split-{split}")))
            for c in (local, portable)
        ]
        assert counts == [EXAMPLES_PER_SPLIT, EXAMPLES_PER_SPLIT], split


def feature_counts(config, split):
    path = os.path.join(output_dir(config, "StatisticsGen", "statistics"), f"Split-{split}", "FeatureStats.pb")
    with open(path, "rb") as f:
        (dataset,) = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read()).datasets
    counts = {"num_examples": dataset.num_examples}
    for feature in dataset.features:
        stats = getattr(feature, feature.WhichOneof("stats")).common_stats  # num_, string_ or bytes_stats
        counts[feature.path.step[0]] = (
            stats.num_non_missing,
            stats.num_missing,
            stats.min_num_values,
            stats.max_num_values,
            stats.tot_num_values,
        )
        if feature.HasField("num_stats"):
            counts[feature.path.step[0] + " min/max/mean"] = (
                feature.num_stats.min,
                feature.num_stats.max,
                round(feature.num_stats.mean, 9),
            )
    return counts


def test_statistics_feature_counts_are_equal(both_runs):
    local, portable, _ = both_runs
    for split in SPLITS:
        expected = feature_counts(local, split)
        assert expected["num_examples"] == EXAMPLES_PER_SPLIT
        assert expected["image"][0] == expected["label"][0] == EXAMPLES_PER_SPLIT  # non-missing
        assert feature_counts(portable, split) == expected, split


def trainer_examples(config, split):
    """The (label, image) pairs the Trainer trains on: the run's ExampleGen output through its
    own Transform graph (Transform does not materialize them)."""
    import tensorflow_transform as tft

    from triplet_tfx.components.training import trainer

    graph = tft.TFTransformOutput(output_dir(config, "Transform", "transform_graph"))
    files = trainer.example_files(
        [os.path.join(output_dir(config, "SourceExampleGen", "examples"), f"Split-{split}", "*")]
    )
    pairs = trainer.transformed_batches(files, graph).unbatch()
    return collections.Counter((int(label), image.numpy().astype(np.float32).tobytes()) for image, label in pairs)


def test_transformed_examples_are_equal_as_sets(both_runs):
    local, portable, _ = both_runs
    for split in SPLITS:
        examples = [trainer_examples(c, split) for c in (local, portable)]
        assert sum(examples[0].values()) == EXAMPLES_PER_SPLIT
        assert len({label for label, _ in examples[0]}) > 1
        assert examples[1] == examples[0], split
