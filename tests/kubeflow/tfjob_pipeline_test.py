"""The whole TFJob path on this machine: compile with --trainer-workers 2 -> the compiled tasks up to
the Trainer run through TFX's KFP v2 entrypoint (kfp_local_executor.py) -> the Trainer step's run_fn
launches the TFJob through the kubernetes client (kubeconfig pointing at kubernetes_standin.py) ->
the stand-in starts the 2 worker pods' command (`python -m triplet_tfx.components.training.worker`)
as processes with the operator's TF_CONFIG -> they train under MultiWorkerMirroredStrategy (200
examples, 4 steps) -> the chief exports the model into the Trainer's output.

The pipeline root is a local folder standing for the PVC that the step and the workers mount.
Slow: seven TFX tasks, each its own process, then two workers (minutes on 2 cores).
"""

import os
import re

import numpy as np
import pytest
import yaml
from kfp_local_executor import run_pipeline_spec
from kubernetes_standin import KubernetesStandIn

from triplet_tfx.kubeflow import runner
from triplet_tfx.pipeline import cli

pytestmark = pytest.mark.slow


def write_kubeconfig(path, host):
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": host}}],
        "users": [{"name": "launcher", "user": {"token": "test-token"}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "launcher"}}],
    }
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tfjob-pipeline")
    mount = tmp / "pvc"
    root = mount / "triplet"
    args = cli.build_parser().parse_args(
        [
            "compile",
            "--output-root",
            str(tmp / "out"),
            "--pipeline-root",
            str(root),
            "--pvc",
            "triplet-claim",
            "--pvc-mount-path",
            str(mount),
            "--trainer-workers",
            "2",
            "--tfjob-namespace",
            "team-a",
            "--gpu-count",
            "0",
            "--max-examples",
            "200",
            "--max-steps",
            "4",
        ]
    )
    package = runner.compile_pipeline(cli.config_from_args(args), str(tmp / "package"))
    pods = tmp / "pods"
    pods.mkdir()
    with KubernetesStandIn(str(pods)) as k8s:
        kubeconfig = write_kubeconfig(tmp / "kubeconfig", k8s.host)
        outputs = run_pipeline_spec(
            package.yaml_path, str(root), env={"KUBECONFIG": kubeconfig}, until="Trainer", timeout_per_task=600
        )
    return outputs, k8s, root


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def test_the_trainer_step_launched_one_tfjob_of_two_workers(trained):
    outputs, k8s, root = trained
    (body,) = k8s.created
    worker = body["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2 and body["metadata"]["namespace"] == "team-a"
    (container,) = worker["template"]["spec"]["containers"]
    (model_run,) = outputs["Trainer"]["model_run"]
    assert container["command"][:4] == ["python", "-m", "triplet_tfx.components.training.worker", "--spec"]
    assert container["command"][4].startswith(model_run.uri) and os.path.isfile(container["command"][4])
    assert worker["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "triplet-claim"}
    step_log = read(os.path.join(str(root), "Trainer", "container.log"))
    name = body["metadata"]["name"]
    assert f"Created TFJob team-a/{name}: 2 worker(s)" in step_log
    assert f"Succeeded (TFJobSucceeded: TFJob team-a/{name} successfully completed.)" in step_log


def test_both_workers_trained_in_sync_under_multi_worker_mirrored_strategy(trained):
    _, k8s, _ = trained
    (job,) = k8s.jobs.values()
    assert [process.returncode for process in job.processes] == [0, 0]
    logs = [read(path) for path in job.logs]
    digests = []
    for log in logs:
        assert "Strategy: MultiWorkerMirroredStrategy, 2 replica(s)" in log
        digests.append(re.findall(r"weights sha256 ([0-9a-f]{64})", log))
    assert len(digests[0]) == 1 and digests[0] == digests[1]


def test_the_chief_exported_one_serving_model_into_the_trainers_output(trained):
    import tensorflow as tf

    from triplet_tfx.components.data import data_sources

    outputs, _, _ = trained
    (model,) = outputs["Trainer"]["model"]
    assert os.listdir(model.uri) == ["Format-Serving"]
    loaded = tf.saved_model.load(os.path.join(model.uri, "Format-Serving"))
    images, labels = data_sources.load_mnist()["test"]
    batch = tf.constant([data_sources.make_example(images[i], labels[i]) for i in range(4)])
    embeddings = loaded.signatures["serving_default"](examples=batch)["embedding"].numpy()
    assert embeddings.shape == (4, 256)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
