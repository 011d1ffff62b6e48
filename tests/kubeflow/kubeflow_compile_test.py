"""`triplet-tfx compile`: the Kubeflow Pipelines v2 package, checked with kfp's own parsers.

Docker and Kubernetes cannot run here: these tests check the package (PipelineSpec protos,
kfp's component loader and the client's package reader), its DAG against the local pipeline,
images and resources per task, the Dockerfiles, and that every module path the spec names is
importable from the installed package.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from triplet_tfx.pipeline import cli
from triplet_tfx.pipeline.pipeline import create_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = [
    "--pipeline-root",
    "gs://my-bucket/triplet",
    "--image",
    "registry.example/triplet-tfx:1",
    "--gpu-image",
    "registry.example/triplet-tfx-gpu:1",
    "--gpu-count",
    "2",
    "--trainer-cpu",
    "4",
    "--trainer-memory",
    "16G",
    "--beam-arg=--runner=DataflowRunner",
    "--beam-arg=--project=p1",
    "--max-examples",
    "500",
]


def compile_cli(tmp_path, *extra, capsys=None):
    code = cli.main(["compile", "--output-root", str(tmp_path), *extra])
    return code, os.path.join(str(tmp_path), "kubeflow", "triplet-mnist.yaml")


def load_documents(path):
    with open(path) as f:
        return list(yaml.safe_load_all(f))


def tasks_and_executors(spec):
    executors = spec["deploymentSpec"]["executors"]
    return {
        name: executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        for name, task in spec["root"]["dag"]["tasks"].items()
    }


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compiled with no network at all: every socket connection attempt fails."""
    root = tmp_path_factory.mktemp("kfp")
    real_connect = socket.socket.connect

    def no_network(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network disabled in this test: {address}")
        return real_connect(self, address)

    socket.socket.connect = no_network
    try:
        code, path = compile_cli(root, *FLAGS)
    finally:
        socket.socket.connect = real_connect
    assert code == 0
    args = cli.build_parser().parse_args(["compile", "--output-root", str(root), *FLAGS])
    return path, load_documents(path)[0], cli.config_from_args(args)


def test_package_is_a_pipeline_spec_with_the_root_as_run_time_default(compiled):
    path, spec, _ = compiled
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    assert parsed.pipeline_info.name == "triplet-mnist"
    assert parsed.default_pipeline_root == "gs://my-bucket/triplet"
    assert parsed.schema_version == "2.0.0" and parsed.sdk_version == "tfx-1.16.0"
    with open(path.replace(".yaml", ".json")) as f:
        job = json.load(f)  # TFX's PipelineJob, kept next to it
    assert job["pipelineSpec"]["root"] == spec["root"]
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://my-bucket/triplet"


def test_kfp_sdk_loads_the_package(compiled):
    import kfp.components
    from kfp.client import client

    path, spec, _ = compiled
    component = kfp.components.load_component_from_file(path)
    assert component.name == "triplet-mnist"
    assert set(component.pipeline_spec.root.dag.tasks) == set(spec["root"]["dag"]["tasks"])
    # What kfp.Client.upload_pipeline / create_run_from_pipeline_package read from a package.
    document = client._extract_pipeline_yaml(path)
    assert document.pipeline_spec.default_pipeline_root == "gs://my-bucket/triplet"


def test_dag_equals_the_local_pipeline(compiled):
    _, spec, config = compiled
    local = create_pipeline(config)
    local_ids = {c.id for c in local.components}
    local_edges = {(u.id, c.id) for c in local.components for u in c.upstream_nodes}

    def local_id(task):  # TFX compiles one Resolver node into two resolver tasks: <id>-<key>-resolver
        if task in local_ids:
            return task
        (owner,) = [i for i in local_ids if task.startswith(i + "-") and task.endswith("-resolver")]
        return owner

    tasks = spec["root"]["dag"]["tasks"]
    assert {local_id(t) for t in tasks} == local_ids
    spec_edges = {
        (local_id(d), local_id(t))
        for t, task in tasks.items()
        for d in task.get("dependentTasks", [])
        if local_id(d) != local_id(t)
    }
    assert spec_edges == local_edges
    # Every input artifact comes from an upstream task of the same DAG.
    for name, task in tasks.items():
        for artifact in task.get("inputs", {}).get("artifacts", {}).values():
            assert artifact["taskOutputArtifact"]["producerTask"] in tasks, name


def test_only_the_trainer_requests_a_gpu_and_uses_the_gpu_image(compiled):
    _, spec, _ = compiled
    containers = {t: e["container"] for t, e in tasks_and_executors(spec).items() if "container" in e}
    assert {t: c.get("resources") for t, c in containers.items() if c.get("resources")} == {
        "Trainer": {"accelerator": {"type": "nvidia.com/gpu", "count": "2"}, "cpuLimit": 4.0, "memoryLimit": 16.0}
    }
    assert containers.pop("Trainer")["image"] == "registry.example/triplet-tfx-gpu:1"
    assert {c["image"] for c in containers.values()} == {"registry.example/triplet-tfx:1"}
    for task, container in {**containers}.items():
        assert container["command"] == [
            "python",
            "-m",
            "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor",
        ], task


DATA_TASKS = {"SourceExampleGen", "StatisticsGen", "Transform"}  # the project's Beam components


def beam_args_by_task(spec):
    """{task: the Beam options of its container}: what follows the executor's own arguments."""
    result = {}
    for task, executor in tasks_and_executors(spec).items():
        if "container" in executor:
            args = executor["container"]["args"]
            rest = args[args.index("{{$}}") + 1 :]
            if rest[:1] == ["--json_serialized_inputs_spec_args"]:
                rest = rest[2:]
            result[task] = rest
    return result


def test_raw_beam_args_follow_the_local_runner_on_the_data_components_only(compiled):
    _, spec, _ = compiled
    by_task = beam_args_by_task(spec)
    fn_api = "--runner=apache_beam.runners.portability.fn_api_runner.fn_runner.FnApiRunner"
    for task in DATA_TASKS:
        assert by_task.pop(task) == [
            fn_api,
            "--direct_num_workers=1",
            "--no_pipeline_type_check",
            "--sdk_container_image=registry.example/triplet-tfx:1",
            "--runner=DataflowRunner",
            "--project=p1",
        ]
    assert by_task and all(args == [] for args in by_task.values()), by_task


@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            [
                "--beam-runner",
                "dataflow",
                "--dataflow-project",
                "p1",
                "--dataflow-region",
                "europe-west4",
                "--dataflow-temp-location",
                "gs://b/tmp",
                "--dataflow-max-workers",
                "16",
                "--dataflow-machine-type",
                "n2-standard-8",
                "--dataflow-service-account",
                "beam@p1.iam.gserviceaccount.com",
            ],
            [
                "--runner=DataflowRunner",
                "--project=p1",
                "--region=europe-west4",
                "--temp_location=gs://b/tmp",
                "--machine_type=n2-standard-8",
                "--max_num_workers=16",
                "--sdk_container_image=cpu:7",
                "--service_account_email=beam@p1.iam.gserviceaccount.com",
            ],
        ),
        # Flink in the same cluster: kubeflow/flink/ (the Beam Flink job server in front of a FlinkDeployment,
        # SDK worker pools as sidecars of the TaskManagers).
        (
            [
                "--beam-runner",
                "flink",
                "--beam-job-endpoint",
                "beam-flink-job-server.flink:8099",
                "--beam-parallelism",
                "4",
                "--beam-artifact-endpoint",
                "beam-flink-job-server.flink:8098",
                "--beam-environment-type",
                "EXTERNAL",
                "--beam-environment-config",
                "localhost:50000",
            ],
            [
                "--runner=FlinkRunner",
                "--job_endpoint=beam-flink-job-server.flink:8099",
                "--artifact_endpoint=beam-flink-job-server.flink:8098",
                "--parallelism=4",
                "--environment_type=EXTERNAL",
                "--environment_config=localhost:50000",
                "--sdk_container_image=cpu:7",
            ],
        ),
    ],
)
def test_distributed_runner_options_reach_the_data_components_only(tmp_path, flags, expected):
    code, path = compile_cli(tmp_path, "--pipeline-root", "gs://b/r", "--image", "cpu:7", *flags)
    assert code == 0
    spec = load_documents(path)[0]
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    by_task = beam_args_by_task(spec)
    assert {task: by_task.pop(task) for task in DATA_TASKS} == {task: expected for task in DATA_TASKS}
    assert {"Trainer", "EmbeddingEvaluator", "SchemaGen", "ExampleValidator", "Pusher"} <= set(by_task)
    assert all(args == [] for args in by_task.values()), by_task


def test_vertex_accelerator_cpu_trainer_and_component_images(tmp_path):
    code, path = compile_cli(
        tmp_path,
        "--pipeline-root",
        "gs://b/r",
        "--gpu-type",
        "NVIDIA_TESLA_T4",
        "--component-image",
        "Transform=img/transform:2",
    )
    assert code == 0
    executors = tasks_and_executors(load_documents(path)[0])
    assert executors["Trainer"]["container"]["resources"] == {"accelerator": {"type": "NVIDIA_TESLA_T4", "count": "1"}}
    assert executors["Transform"]["container"]["image"] == "img/transform:2"

    code, path = compile_cli(tmp_path, "--pipeline-root", "gs://b/r", "--gpu-count", "0", "--image", "cpu:3")
    assert code == 0
    trainer = tasks_and_executors(load_documents(path)[0])["Trainer"]["container"]
    assert trainer["image"] == "cpu:3" and "resources" not in trainer


def test_pvc_pipeline_root_adds_a_kubernetes_platform_spec(tmp_path):
    from kfp.client import client

    code, path = compile_cli(tmp_path, "--pipeline-root", "/mnt/pipeline/triplet", "--pvc", "triplet-data")
    assert code == 0
    spec, platform = load_documents(path)
    assert spec["defaultPipelineRoot"] == "/mnt/pipeline/triplet"
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(mounts) == {e for e, v in spec["deploymentSpec"]["executors"].items()}
    assert mounts["Trainer_executor"]["pvcMount"] == [{"constant": "triplet-data", "mountPath": "/mnt/pipeline"}]
    assert client._extract_pipeline_yaml(path).platform_spec.platforms["kubernetes"]


def test_remote_data_source_is_not_checked_at_compile_time(tmp_path):
    code, path = compile_cli(
        tmp_path,
        "--pipeline-root",
        "s3://b/r",
        "--data",
        "tfrecord:gs://bucket/mnist",
        "--serving-dir",
        "gs://bucket/serving",
    )
    assert code == 0
    pusher = load_documents(path)[0]["root"]["dag"]["tasks"]["Pusher"]["inputs"]["parameters"]
    destination = json.loads(pusher["push_destination"]["runtimeValue"]["constantValue"]["stringValue"])
    assert destination["filesystem"]["base_directory"] == "gs://bucket/serving/triplet_mnist"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--gpu-type", "a T4 please"], "--gpu-type"),
        (["--pipeline-root", "relative/root"], "--pvc"),
        (["--pipeline-root", "/data/root", "--pvc", "c"], "below the PVC mount path"),
        (["--pipeline-name", "Triplet_MNIST"], "--pipeline-name"),
        (["--component-image", "Trainer"], "--component-image"),
    ],
)
def test_bad_kubeflow_flags_are_named(tmp_path, capsys, flags, message):
    code, _ = compile_cli(tmp_path, *flags)
    assert code == 2
    assert message in capsys.readouterr().err


def test_compile_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compile", "--help"])
    text = capsys.readouterr().out
    for needle in (
        "--pipeline-root",
        "gs://",
        "s3://",
        "minio://",
        "--pvc",
        "--image",
        "--gpu-image",
        "nvidia.com/gpu",
        "NVIDIA_TESLA_T4",
        "--gpu-count",
        "--trainer-cpu",
        "--trainer-memory",
        "--beam-runner dataflow",
        "--dataflow-temp-location gs://",
        "--beam-runner flink",
        "--beam-job-endpoint",
        "--beam-artifact-endpoint",
        "kubeflow/flink/",
        "--beam-runner spark",
        "--beam-arg",
        "--data",
        "kfp pipeline create",
    ):
        assert needle in text, needle


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_install_the_project_with_the_pinned_constraints(dockerfile):
    with open(os.path.join(REPO, "kubeflow", dockerfile)) as f:
        text = f.read()
    base = {"Dockerfile": "FROM gcr.io/tfx-oss-public/tfx:1.16.0", "Dockerfile.gpu": "FROM python:3.10-"}[dockerfile]
    assert base in text
    assert "COPY constraints.txt setup.py ./" in text
    for folder in ("pipeline/", "components/", "kubeflow/"):
        assert f"COPY {folder} {folder}" in text
    assert "pip install -c constraints.txt ." in text
    assert "ENV TF_USE_LEGACY_KERAS=0" in text
    # The start-up file into the interpreter's site-packages, after the project is installed.
    install = text.index("pip install -c constraints.txt .")
    assert text.index("RUN cp kubeflow/triplet_tfx_first.pth \"$(python -c 'import sysconfig;") > install
    with open(os.path.join(REPO, "kubeflow", dockerfile + ".dockerignore")) as f:
        assert {"!constraints.txt", "!setup.py", "!pipeline/", "!components/", "!kubeflow/"} <= set(f.read().split())
    with open(os.path.join(REPO, "constraints.txt")) as f:
        pins = f.read()
    assert "tensorflow==2.16.2" in pins and "tfx==1.16.0" in pins  # what the base images match


def test_cpu_image_has_beams_worker_boot_of_the_pinned_beam():
    """The CPU image is the data components' SDK worker image (Dataflow, DOCKER, Flink sidecar):
    its /opt/apache/beam/boot must come from the Beam release the image installs."""
    with open(os.path.join(REPO, "kubeflow", "Dockerfile")) as f:
        text = f.read()
    with open(os.path.join(REPO, "constraints.txt")) as f:
        (beam,) = [line.split("==")[1].strip() for line in f if line.startswith("apache-beam==")]
    assert f"FROM apache/beam_python3.10_sdk:{beam} AS beam-sdk" in text
    assert "COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam" in text


@pytest.mark.slow
def test_module_paths_named_by_the_spec_are_importable_from_the_installed_package(compiled, tmp_path):
    _, spec, _ = compiled
    classes, functions = set(), set()
    for executor in spec["deploymentSpec"]["executors"].values():
        if "container" in executor:
            args = executor["container"]["args"]
            classes.add(args[args.index("--executor_class_path") + 1])
            module = executor["container"]["command"][2]
    tasks = spec["root"]["dag"]["tasks"]
    for task, key in (("Transform", "preprocessing_fn"), ("Trainer", "run_fn")):
        functions.add(tasks[task]["inputs"]["parameters"][key]["runtimeValue"]["constantValue"]["stringValue"])
    assert functions == {
        "triplet_tfx.components.data.preprocessing.preprocessing_fn",
        "triplet_tfx.components.training.run.run_fn",
    }
    assert not any("module_file" in t.get("inputs", {}).get("parameters", {}) for t in tasks.values())
    # A fresh interpreter outside the repository, as in the image: nothing but installed packages.
    script = (
        "import importlib, json, sys\n"
        "from tfx.utils import import_utils\n"
        f"importlib.import_module({module!r})\n"
        "found = {}\n"
        f"for path in {sorted(classes)!r}:\n"
        "    found[path] = import_utils.import_class_by_path(path).__module__\n"
        f"for path in {sorted(functions)!r}:\n"
        "    module, name = path.rsplit('.', 1)\n"
        "    found[path] = getattr(importlib.import_module(module), name).__module__\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "0", "PYTHONPATH": ""},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(found) == classes | functions
    assert any(path.startswith("triplet_tfx.components.") for path in classes)
