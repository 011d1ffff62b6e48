"""kubeflow/flink/: the FlinkDeployment and Beam's Flink job server, checked without a cluster.

The FlinkDeployment's spec is validated against the Flink Kubernetes operator's own CRD schema
(flinkdeployment_v1beta1_spec.schema.yaml, copied from its release-1.15.0; made strict here, since
Kubernetes would silently drop a misspelled field), its pod template and the plain objects with
the kubernetes client's models (a round trip through the model must keep every field).
"""

import os

import apache_beam
import jsonschema
import pytest
import yaml
from kubernetes import client

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLINK_DIR = os.path.join(REPO, "kubeflow", "flink")
SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flinkdeployment_v1beta1_spec.schema.yaml")


def load(name):
    with open(os.path.join(FLINK_DIR, name)) as f:
        return list(yaml.safe_load_all(f))


def strict(schema):
    """Objects with declared properties accept no others (as `kubectl apply --validate=strict`)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    return [strict(v) for v in schema] if isinstance(schema, list) else schema


def as_model(obj, model_name):
    """Deserializes into the kubernetes client's model and back: unknown or mistyped fields are lost."""
    api = client.ApiClient()
    model = api._ApiClient__deserialize(obj, model_name)
    assert api.sanitize_for_serialization(model) == obj, model_name
    return model


@pytest.fixture(scope="module")
def flink_deployment():
    (document,) = load("flink-deployment.yaml")
    return document


@pytest.fixture(scope="module")
def job_server():
    return {document["kind"]: document for document in load("beam-flink-job-server.yaml")}


def test_flink_deployment_matches_the_operators_crd(flink_deployment):
    assert flink_deployment["apiVersion"] == "flink.apache.org/v1beta1"
    assert flink_deployment["kind"] == "FlinkDeployment"
    with open(SCHEMA) as f:
        schema = strict(yaml.safe_load(f))
    jsonschema.validate(flink_deployment["spec"], schema)
    assert "job" not in flink_deployment["spec"]  # a session cluster: the job server submits the jobs
    with pytest.raises(jsonschema.ValidationError):  # the strict schema does catch a typo
        jsonschema.validate({**flink_deployment["spec"], "taskManger": {}}, schema)


def test_task_managers_run_the_projects_sdk_worker_pool(flink_deployment):
    pod = as_model(flink_deployment["spec"]["taskManager"]["podTemplate"], "V1Pod")
    containers = {c.name: c for c in pod.spec.containers}
    assert set(containers) == {"flink-main-container", "beam-worker-pool"}
    pool = containers["beam-worker-pool"]
    assert pool.image.endswith("/triplet-tfx:0.1.0")  # the project's CPU image (kubeflow/Dockerfile)
    assert pool.command == ["python", "-m", "apache_beam.runners.worker.worker_pool_main"]
    # What --beam-environment-type EXTERNAL --beam-environment-config localhost:50000 reaches.
    assert pool.args == ["--service_port=50000"] and [p.container_port for p in pool.ports] == [50000]
    assert {e.name: e.value for e in pool.env}["TF_USE_LEGACY_KERAS"] == "0"


def test_job_server_matches_beam_and_the_flink_cluster(flink_deployment, job_server):
    assert set(job_server) == {"PersistentVolumeClaim", "Deployment", "Service"}
    deployment = as_model(job_server["Deployment"], "V1Deployment")
    service = as_model(job_server["Service"], "V1Service")
    claim = as_model(job_server["PersistentVolumeClaim"], "V1PersistentVolumeClaim")
    (container,) = deployment.spec.template.spec.containers
    flink = flink_deployment["spec"]["flinkVersion"].lstrip("v").replace("_", ".")
    # Beam's Flink job server image for the installed Beam version and the cluster's Flink version.
    assert container.image == f"apache/beam_flink{flink}_job_server:{apache_beam.__version__}"
    assert flink_deployment["spec"]["image"] == f"flink:{flink}"
    args = dict(a[2:].split("=", 1) for a in container.args)
    # The operator's REST Service of the session cluster is <name>-rest, port 8081.
    assert args["flink-master"] == f"{flink_deployment['metadata']['name']}-rest:8081"
    ports = {p.name: p.container_port for p in container.ports}
    assert ports == {
        "job": int(args["job-port"]),
        "artifact": int(args["artifact-port"]),
        "expansion": int(args["expansion-port"]),
    }
    assert service.spec.selector == deployment.spec.template.metadata.labels == deployment.spec.selector.match_labels
    assert {p.port: p.target_port for p in service.spec.ports} == {8099: "job", 8098: "artifact", 8097: "expansion"}
    assert service.metadata.name == "beam-flink-job-server"  # --beam-job-endpoint beam-flink-job-server.<ns>:8099
    # Staged artifacts: one ReadWriteMany claim, at the same path in the job server and the TaskManagers.
    assert claim.spec.access_modes == ["ReadWriteMany"]
    task_manager = as_model(flink_deployment["spec"]["taskManager"]["podTemplate"]["spec"], "V1PodSpec")
    (flink_container,) = [c for c in task_manager.containers if c.name == "flink-main-container"]
    for pod_spec, mounted in ((deployment.spec.template.spec, container), (task_manager, flink_container)):
        (volume,) = pod_spec.volumes
        assert volume.persistent_volume_claim.claim_name == claim.metadata.name
        assert [(m.name, m.mount_path) for m in mounted.volume_mounts] == [(volume.name, args["artifacts-dir"])]
