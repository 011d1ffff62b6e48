"""Strategy choice, the split of the global batch over replicas, and one Trainer step under
MirroredStrategy on two logical CPU devices against one device."""

import json
import os
import subprocess
import sys

import pytest

from triplet_tfx.components.config import ConfigError, PipelineConfig, TrainConfig
from triplet_tfx.components.training import distribute
from triplet_tfx.pipeline import cli

HERE = os.path.dirname(os.path.abspath(__file__))


def test_auto_strategy_follows_the_cluster_then_the_gpus():
    assert distribute.choose_strategy("auto", tasks=0, gpus=0) == "default"
    assert distribute.choose_strategy("auto", tasks=1, gpus=1) == "default"
    assert distribute.choose_strategy("auto", tasks=0, gpus=4) == "mirrored"
    assert distribute.choose_strategy("auto", tasks=2, gpus=4) == "multi_worker"
    assert distribute.choose_strategy("one_device", tasks=2, gpus=4) == "one_device"
    assert distribute.choose_strategy("mirrored", tasks=0, gpus=0) == "mirrored"


def test_tf_config_tasks_and_chief():
    cluster = {"chief": ["h:1"], "worker": ["h:2", "h:3"], "evaluator": ["h:4"]}
    assert distribute.cluster_tasks(distribute.parse_tf_config(json.dumps({"cluster": cluster}))) == 3
    assert distribute.cluster_tasks(distribute.parse_tf_config(None)) == 0
    assert distribute.is_chief({})
    assert distribute.is_chief({"cluster": cluster, "task": {"type": "chief", "index": 0}})
    assert not distribute.is_chief({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    # A TFJob of Worker replicas only: worker 0 is the chief.
    workers_only = {"worker": ["h:1", "h:2"]}
    assert distribute.is_chief({"cluster": workers_only, "task": {"type": "worker", "index": 0}})
    assert not distribute.is_chief({"cluster": workers_only, "task": {"type": "worker", "index": 1}})


def test_global_batch_splits_into_whole_classes():
    assert distribute.replica_batch_size(TrainConfig(batch_size=256, examples_per_class=32), 4) == 64
    assert distribute.replica_batch_size(TrainConfig(batch_size=30), 3) == 10
    with pytest.raises(ConfigError, match=r"--batch-size.*32 does not divide evenly over 3 replicas"):
        distribute.replica_batch_size(TrainConfig(batch_size=32), 3)
    # 8 classes x 32 over 16 replicas: 16 examples each, but half a class.
    with pytest.raises(ConfigError, match=r"--examples-per-class.*--batch-size.*8 classes x 32.*16 replicas"):
        distribute.replica_batch_size(TrainConfig(batch_size=256, examples_per_class=32), 16)


def test_config_checks_name_the_flags():
    for train, flag in [
        (TrainConfig(strategy="tpu"), "--strategy"),
        (TrainConfig(mining="batch"), "--mining"),
        (TrainConfig(checkpoint_every=0), "--checkpoint-every"),
        (TrainConfig(workers=0), "--workers"),
        (TrainConfig(workers=2, strategy="mirrored"), "--strategy"),
    ]:
        with pytest.raises(ConfigError, match=flag):
            PipelineConfig(train=train).validate()
    args = cli.build_parser().parse_args(
        ["run", "--strategy", "multi_worker", "--mining", "replica", "--checkpoint-every", "50", "--workers", "3"]
    )
    train = cli.config_from_args(args).train
    assert (train.strategy, train.mining, train.checkpoint_every, train.workers) == ("multi_worker", "replica", 50, 3)
    assert TrainConfig().strategy == "auto" and TrainConfig().mining == "global"


@pytest.mark.slow
def test_mirrored_step_equals_one_device_on_the_global_batch():
    """Tolerances: the loss to 1e-6 (relative); after one Adam step of 1e-2, all but 0.1 % of the
    weights to 1e-5 and every one to 1e-4. Adam's first step is lr * g / (|g| + eps): a weight whose
    gradient is near eps in size moves by another amount when the gradient is summed in another order
    (the replicas' all-reduce; one weight of 10,608 off by 1.8e-5 on a CPU with AVX2 only). That update
    hardly depends on a gradient's size, so the gradients themselves (Adam's first moments) are
    compared too: to 1e-5 of the largest."""
    run = subprocess.run(
        [sys.executable, os.path.join(HERE, "two_replica_step.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["per_replica_batch"] == 8
    assert result["one_device"]["max_weight_change"] > 1e-3  # the step did train
    assert result["global"]["loss"] == pytest.approx(result["one_device"]["loss"], rel=1e-6)
    assert result["global"]["max_weight_diff"] < 1e-4
    assert result["global"]["weights_off_by_1e-5"] <= result["global"]["weights"] // 1000
    assert result["global"]["max_gradient_diff"] <= 1e-5 * result["one_device"]["max_gradient"]
    # Mining each replica's half alone is a different step: global mining is really on.
    assert abs(result["replica"]["loss"] - result["one_device"]["loss"]) > 1e-3
    assert result["replica"]["max_weight_diff"] > 1e-3
    assert result["replica"]["weights_off_by_1e-5"] > result["replica"]["weights"] // 10
    assert result["replica"]["max_gradient_diff"] > 0.1 * result["one_device"]["max_gradient"]
