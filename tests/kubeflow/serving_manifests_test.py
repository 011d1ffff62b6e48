"""kubeflow/serving/: the TF Serving Deployment + Service (+ ConfigMap, GPU patch) through the kubernetes
client's models, and the KServe InferenceService against KServe's CRD schema (a vendored excerpt,
kserve_crd_excerpt.yaml, source and commit stated there). No cluster is involved."""

import copy
import json
import os

import jsonschema
import pytest
import yaml
from google.protobuf import text_format
from kubernetes import client as k8s
from tensorflow_serving.config import model_server_config_pb2

from triplet_tfx.components.config import PipelineConfig

# Flags of tensorflow_model_server, from tensorflow_serving/model_servers/main.cc at tag 2.16.1 (the ones used here).
TF_SERVING_FLAGS = {
    "port",
    "rest_api_port",
    "model_config_file",
    "model_config_file_poll_wait_seconds",
    "file_system_poll_wait_seconds",
    "model_name",
    "model_base_path",
}
ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "kubeflow", "serving")
MODEL_NAME = PipelineConfig().model_name


def load(name):
    with open(os.path.join(ROOT, name)) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


class _Response:
    def __init__(self, obj):
        self.data = json.dumps(obj)


def as_model(obj, kind):
    """The object as the kubernetes client's model; it must round-trip unchanged (no unknown fields)."""
    api = k8s.ApiClient()
    model = api.deserialize(_Response(obj), kind)
    assert api.sanitize_for_serialization(model) == obj, f"{kind}: fields the kubernetes client does not know"
    return model


@pytest.fixture(scope="module")
def objects():
    docs = load("tf-serving.yaml")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service"]
    config_map, deployment, service = docs
    return {
        "config_map": as_model(config_map, "V1ConfigMap"),
        "deployment": as_model(deployment, "V1Deployment"),
        "service": as_model(service, "V1Service"),
        "raw_deployment": deployment,
    }


def model_config(config_map):
    return text_format.Parse(config_map.data["models.config"], model_server_config_pb2.ModelServerConfig())


def test_model_config_loads_the_pushers_base_directory_with_a_version_policy(objects):
    (model,) = model_config(objects["config_map"]).model_config_list.config
    assert model.name == MODEL_NAME and model.model_platform == "tensorflow"
    # The Pusher's layout: <serving dir>/<model name>/<version>/ (PipelineConfig.serving_model_dir).
    assert model.base_path == PipelineConfig(serving_dir="gs://MY_BUCKET/triplet/serving").serving_model_dir
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2


def test_deployment_runs_tf_serving_with_ports_probe_and_resources(objects):
    deployment, config_map = objects["deployment"], objects["config_map"]
    pod = deployment.spec.template
    assert deployment.spec.selector.match_labels.items() <= pod.metadata.labels.items()
    (container,) = pod.spec.containers
    assert container.image.startswith("tensorflow/serving:2.16")
    ports = {p.name: p.container_port for p in container.ports}
    assert ports == {"grpc": 8500, "http": 8501}
    assert {"--port=8500", "--rest_api_port=8501"} <= set(container.args)
    assert {a[2:].split("=")[0] for a in container.args} <= TF_SERVING_FLAGS
    (config_flag,) = [a for a in container.args if a.startswith("--model_config_file=")]
    (mount,) = container.volume_mounts
    (volume,) = pod.spec.volumes
    assert volume.name == mount.name and volume.config_map.name == config_map.metadata.name
    assert config_flag.split("=", 1)[1] == f"{mount.mount_path}/models.config"
    probe = container.readiness_probe.http_get
    assert probe.path == f"/v1/models/{MODEL_NAME}" and ports[probe.port] == 8501
    assert container.resources.requests["cpu"] and container.resources.requests["memory"]
    assert "nvidia.com/gpu" not in (container.resources.limits or {})


def test_service_exposes_rest_and_grpc(objects):
    service, deployment = objects["service"], objects["deployment"]
    assert service.spec.selector.items() <= deployment.spec.template.metadata.labels.items()
    container_ports = {p.name for p in deployment.spec.template.spec.containers[0].ports}
    assert {(p.name, p.port, p.target_port) for p in service.spec.ports} == {
        ("grpc", 8500, "grpc"),
        ("http", 8501, "http"),
    }
    assert {p.target_port for p in service.spec.ports} <= container_ports


def test_gpu_patch_is_a_valid_deployment_variant(objects):
    (patch,) = load("tf-serving-gpu-patch.yaml")
    deployment = copy.deepcopy(objects["raw_deployment"])
    pod, patch_pod = deployment["spec"]["template"]["spec"], patch["spec"]["template"]["spec"]
    (patch_container,) = patch_pod["containers"]
    (container,) = pod["containers"]
    assert patch_container["name"] == container["name"]  # strategic merge: containers merge by name
    container["image"] = patch_container["image"]
    container["resources"]["limits"].update(patch_container["resources"]["limits"])
    pod["tolerations"] = patch_pod["tolerations"]
    gpu = as_model(deployment, "V1Deployment").spec.template.spec
    assert gpu.containers[0].image == objects["deployment"].spec.template.spec.containers[0].image + "-gpu"
    assert gpu.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert gpu.tolerations[0].key == "nvidia.com/gpu"


@pytest.fixture(scope="module")
def kserve():
    with open(os.path.join(os.path.dirname(__file__), "kserve_crd_excerpt.yaml")) as f:
        return yaml.safe_load(f)


def _unknown_fields(value, schema, path=""):
    """Fields of value that the schema does not declare (the API server would drop them)."""
    if not isinstance(value, dict) or "properties" not in schema:
        return []  # maps (metadata, resource quantities) are free-form in the CRD
    found = []
    for key, item in value.items():
        if key not in schema["properties"]:
            found.append(f"{path}.{key}")
        else:
            found += _unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    return found


def test_inference_service_matches_kserves_schema_and_runtime(kserve, objects):
    (isvc,) = load("kserve-inferenceservice.yaml")
    assert isvc["apiVersion"] == f"{kserve['group']}/{kserve['version']}" and kserve["served"]
    assert isvc["kind"] == kserve["kind"]
    jsonschema.validate(isvc, kserve["openAPIV3Schema"])
    assert _unknown_fields(isvc, kserve["openAPIV3Schema"]) == []
    model = isvc["spec"]["predictor"]["model"]
    runtime = kserve["tensorflowRuntime"]
    assert any(
        f["name"] == model["modelFormat"]["name"] and f["version"] == model["modelFormat"]["version"]
        for f in runtime["supportedModelFormats"]
    )
    assert model["protocolVersion"] in runtime["protocolVersions"]
    # The same pushed base directory and TF Serving version as the plain Deployment.
    (served,) = model_config(objects["config_map"]).model_config_list.config
    assert model["storageUri"] == served.base_path
    image = objects["deployment"].spec.template.spec.containers[0].image
    assert image == f"tensorflow/serving:{model['runtimeVersion']}"


def test_schema_check_catches_a_misspelt_field(kserve):
    (isvc,) = load("kserve-inferenceservice.yaml")
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    assert _unknown_fields(isvc, kserve["openAPIV3Schema"]) == [".spec.predictor.model.storageURI"]
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(isvc, kserve["openAPIV3Schema"])
