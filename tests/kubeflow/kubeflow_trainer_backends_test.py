"""`triplet-tfx compile --trainer-workers N` (a TFJob launched by the Trainer step) and
`--trainer-backend vertex` (TFX's Vertex AI Trainer): the Trainer task of the compiled PipelineSpec,
its custom_config, image and resources; the Vertex AI CustomJob TFX would submit from it, checked with
Vertex AI's own CustomJob type; the configuration errors.
"""

import dataclasses
import json

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from triplet_tfx.components.config import ConfigError, KubeflowConfig, PipelineConfig
from triplet_tfx.kubeflow import runner
from triplet_tfx.pipeline import cli

IMAGES = ["--image", "registry.example/triplet-tfx:1", "--gpu-image", "registry.example/triplet-tfx-gpu:1"]


def compile_yaml(tmp_path, *flags):
    assert cli.main(["compile", "--output-root", str(tmp_path), "--max-examples", "200", *IMAGES, *flags]) == 0
    with open(tmp_path / "kubeflow" / "triplet-mnist.yaml") as f:
        documents = list(yaml.safe_load_all(f))
    json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    return documents


def trainer_task(spec):
    task = spec["root"]["dag"]["tasks"]["Trainer"]
    executor = spec["deploymentSpec"]["executors"][spec["components"][task["componentRef"]["name"]]["executorLabel"]]
    custom_config = json.loads(
        task["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constantValue"]["stringValue"]
    )
    return executor["container"], custom_config


@pytest.fixture(scope="module")
def tfjob_package(tmp_path_factory):
    return compile_yaml(
        tmp_path_factory.mktemp("tfjob"),
        "--pipeline-root",
        "/mnt/pipeline/triplet",
        "--pvc",
        "triplet-claim",
        "--trainer-workers",
        "4",
        "--gpu-count",
        "2",
        "--trainer-cpu",
        "6",
        "--trainer-memory",
        "20G",
        "--tfjob-namespace",
        "team-a",
        "--tfjob-service-account",
        "gcs-writer",
    )


@pytest.fixture(scope="module")
def vertex_package(tmp_path_factory):
    return compile_yaml(
        tmp_path_factory.mktemp("vertex"),
        "--pipeline-root",
        "gs://bucket/triplet",
        "--trainer-backend",
        "vertex",
        "--trainer-workers",
        "3",
        "--vertex-project",
        "my-project",
        "--vertex-region",
        "europe-west4",
        "--vertex-machine-type",
        "a2-highgpu-2g",
        "--gpu-type",
        "NVIDIA_TESLA_A100",
        "--gpu-count",
        "2",
    )


def test_trainer_workers_put_the_tfjob_section_into_the_trainers_custom_config(tfjob_package):
    spec = tfjob_package[0]
    container, custom_config = trainer_task(spec)
    assert custom_config["tfjob"] == {
        "workers": 4,
        "image": "registry.example/triplet-tfx-gpu:1",
        "gpu_type": "nvidia.com/gpu",
        "gpu_count": 2,
        "cpu_limit": 6.0,
        "memory_limit_gb": 20.0,
        "namespace": "team-a",
        "service_account": "gcs-writer",
        "pvc": "triplet-claim",
        "pvc_mount_path": "/mnt/pipeline",
    }
    assert {"data", "train", "code_fingerprint"} <= set(custom_config)
    # The step only launches and waits: CPU image, no GPU or limits of its own; the workers get them.
    assert container["image"] == "registry.example/triplet-tfx:1" and "resources" not in container
    assert container["args"][:2] == ["--executor_class_path", "tfx.components.trainer.executor.GenericExecutor"]
    # The PVC is mounted in the Trainer step too (it writes the worker spec there).
    executors = tfjob_package[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    trainer_label = spec["components"][spec["root"]["dag"]["tasks"]["Trainer"]["componentRef"]["name"]]["executorLabel"]
    assert executors[trainer_label]["pvcMount"] == [{"constant": "triplet-claim", "mountPath": "/mnt/pipeline"}]
    (line,) = [line for line in runner.summarize(runner.CompiledPackage("", "", spec)) if "Trainer" in line]
    assert line.endswith("[launches a TFJob: 4 workers x 2 nvidia.com/gpu, registry.example/triplet-tfx-gpu:1]")


def test_one_worker_trains_in_the_step_as_before(tmp_path):
    spec = compile_yaml(tmp_path, "--pipeline-root", "gs://bucket/triplet", "--gpu-count", "1")[0]
    container, custom_config = trainer_task(spec)
    assert "tfjob" not in custom_config and container["image"] == "registry.example/triplet-tfx-gpu:1"
    assert container["resources"]["accelerator"] == {"count": "1", "type": "nvidia.com/gpu"}


def test_vertex_backend_compiles_tfxs_vertex_trainer_with_worker_pools(vertex_package):
    container, custom_config = trainer_task(vertex_package[0])
    assert container["args"][:2] == [
        "--executor_class_path",
        "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor",
    ]
    assert container["image"] == "registry.example/triplet-tfx:1" and "resources" not in container
    assert "tfjob" not in custom_config
    assert custom_config["ai_platform_enable_vertex"] is True
    assert custom_config["ai_platform_vertex_region"] == "europe-west4"
    machine = {"machine_type": "a2-highgpu-2g", "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 2}
    image = {"image_uri": "registry.example/triplet-tfx-gpu:1"}
    assert custom_config["ai_platform_training_args"] == {
        "project": "my-project",
        "job_spec": {
            "worker_pool_specs": [
                {"machine_spec": machine, "replica_count": 1, "container_spec": image},  # the chief
                {"machine_spec": machine, "replica_count": 2, "container_spec": image},
            ]
        },
    }
    summary = runner.summarize(runner.CompiledPackage("", "", vertex_package[0]))
    (line,) = [line for line in summary if "Trainer" in line]
    assert line.endswith(
        "[Vertex AI job: 3 replicas of a2-highgpu-2g + 2 NVIDIA_TESLA_A100, registry.example/triplet-tfx-gpu:1]"
    )


def test_the_custom_job_tfx_submits_is_a_valid_vertex_custom_job(vertex_package):
    """What TFX's Vertex client builds from that custom_config (its own code, no network), parsed by
    Vertex AI's CustomJob type, which rejects unknown fields and accelerator names."""
    from google.cloud.aiplatform_v1.types.custom_job import CustomJob
    from tfx.extensions.google_cloud_ai_platform import training_clients

    _, custom_config = trainer_task(vertex_package[0])
    job_args = dict(custom_config["ai_platform_training_args"])
    job_args.pop("project")  # taken out by TFX's runner before this call
    client = object.__new__(training_clients.VertexJobClient)  # no credentials: only the job body is built
    body = client.create_training_job(
        {},
        {},
        {"custom_config": json.dumps(custom_config)},
        "tfx.components.trainer.executor.GenericExecutor",
        job_args,
        None,
        None,
    )
    job = CustomJob(body)
    pools = job.job_spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 2]
    assert pools[0].machine_spec.accelerator_type.name == "NVIDIA_TESLA_A100"
    assert pools[1].machine_spec.accelerator_count == 2 and pools[1].machine_spec.machine_type == "a2-highgpu-2g"
    assert pools[0].container_spec.image_uri == "registry.example/triplet-tfx-gpu:1"
    assert list(pools[0].container_spec.command[:3]) == ["python", "-m", "tfx.scripts.run_executor"]


@pytest.mark.parametrize(
    "kubeflow, message",
    [
        (dict(trainer_workers=0), r"kubeflow.trainer_workers \(--trainer-workers\): must be at least 1"),
        (dict(trainer_backend="slurm"), r"kubeflow.trainer_backend \(--trainer-backend\): 'slurm'"),
        (
            dict(trainer_workers=2, gpu_type="NVIDIA_TESLA_T4"),
            r"kubeflow.gpu_type \(--gpu-type\): 'NVIDIA_TESLA_T4': "
            "TFJob workers request a Kubernetes resource",
        ),
        (dict(trainer_backend="vertex", pipeline_root="gs://b/r"), r"kubeflow.vertex_project \(--vertex-project\)"),
        (
            dict(trainer_backend="vertex", vertex_project="p", pipeline_root="s3://b/r"),
            r"kubeflow.pipeline_root \(--pipeline-root\): 's3://b/r': Vertex AI .* use gs://",
        ),
        (
            dict(trainer_backend="vertex", vertex_project="p", pipeline_root="gs://b/r"),
            r"kubeflow.gpu_type \(--gpu-type\): 'nvidia.com/gpu': Vertex AI needs an accelerator type",
        ),
    ],
)
def test_invalid_trainer_settings_name_the_flag(kubeflow, message):
    config = dataclasses.replace(PipelineConfig(), kubeflow=KubeflowConfig(**{"pipeline_root": "gs://b/r", **kubeflow}))
    with pytest.raises(ConfigError, match=message):
        runner.validate_kubeflow(config)


def test_compile_help_explains_the_trainer_backends(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compile", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--trainer-workers",
        "--trainer-backend",
        "--tfjob-namespace",
        "--tfjob-service-account",
        "--vertex-project",
        "--vertex-region",
        "--vertex-machine-type",
        "kubeflow/tfjob-rbac.yaml",
    ):
        assert flag in out
