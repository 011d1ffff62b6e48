"""The TFJob launcher (components/training/tfjob.py) against a local stand-in of the Kubernetes API
(tests/kubeflow/kubernetes_standin.py), with small worker programs instead of training: the
manifest, TF_CONFIG per worker, status streaming, the failure reason, reattaching, deleting on stop,
and that every API call is granted by kubeflow/tfjob-rbac.yaml.
"""

import json
import logging
import os
import sys

import pytest
import yaml
from kubernetes import client
from kubernetes_standin import KubernetesStandIn
from tfx.components.trainer.fn_args_utils import FnArgs

from triplet_tfx.components.config import KubeflowConfig, PipelineConfig
from triplet_tfx.components.training import tfjob, worker
from triplet_tfx.kubeflow import runner

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
import signalled_in_a_weakref_callback  # noqa: E402  (tests/)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RBAC = os.path.join(REPO, "kubeflow", "tfjob-rbac.yaml")

# Each worker writes the TF_CONFIG it was given next to the spec file; worker 1 fails when told to.
WORKER = """
import json, os, sys
spec_dir = os.path.dirname(sys.argv[-1])
config = json.loads(os.environ["TF_CONFIG"])
index = config["task"]["index"]
with open(os.path.join(spec_dir, f"tf_config_{index}.json"), "w") as f:
    json.dump(config, f)
spec = json.load(open(sys.argv[-1]))
print(f"worker {index} read the spec of {spec['serving_model_dir']}")
if index == 1 and spec["custom_config"].get("fail"):
    print("worker 1: out of memory in step 3", file=sys.stderr)
    sys.exit(1)
"""


def fn_args(tmp_path, section, **custom):
    run_dir = tmp_path / "Trainer" / "model_run" / "7"
    return FnArgs(
        working_dir=str(run_dir),
        train_files=[str(tmp_path / "train" / "*")],
        eval_files=[str(tmp_path / "eval" / "*")],
        transform_output=str(tmp_path / "transform"),
        serving_model_dir=str(tmp_path / "Trainer" / "model" / "7" / "Format-Serving"),
        model_run_dir=str(run_dir),
        custom_config={"train": {"epochs": 1}, tfjob.TFJOB_KEY: section, **custom},
    )


def section(workers=3, **kubeflow):
    return runner.tfjob_section(KubeflowConfig(trainer_workers=workers, tfjob_namespace="team-a", **kubeflow))


def api_client(host):
    configuration = client.Configuration(host=host)
    return client.ApiClient(configuration)


def launch(tmp_path, args, caplog, poll=0.2):
    """Runs the launcher against a stand-in whose workers run WORKER with the container's --spec."""
    standin = KubernetesStandIn(str(tmp_path))
    with standin:
        spec_path = worker.write_spec(args)  # what the launcher will write, to build the workers' argv
        standin.worker_command = [sys.executable, "-c", WORKER, spec_path]
        with caplog.at_level(logging.INFO, logger=tfjob.__name__):
            try:
                result = tfjob.launch_and_wait(args, api_client(standin.host), poll_seconds=poll)
                error = None
            except tfjob.TFJobFailed as err:
                result, error = None, err
        return standin, result, error, spec_path


def test_launches_n_workers_with_the_operators_tf_config_and_streams_the_status(tmp_path, caplog):
    args = fn_args(
        tmp_path,
        section(
            workers=3,
            pvc="pipeline-claim",
            gpu_type="nvidia.com/gpu",
            gpu_count=2,
            trainer_cpu=8,
            trainer_memory=30,
            tfjob_service_account="trainer-sa",
        ),
    )
    standin, (namespace, name), error, spec_path = launch(tmp_path, args, caplog)
    assert error is None and namespace == "team-a" and name == tfjob.job_name(args.model_run_dir)

    (body,) = standin.created
    assert (body["apiVersion"], body["kind"], body["metadata"]["namespace"]) == ("kubeflow.org/v1", "TFJob", "team-a")
    worker = body["spec"]["tfReplicaSpecs"]["Worker"]
    assert list(body["spec"]["tfReplicaSpecs"]) == ["Worker"] and worker["replicas"] == 3
    pod = worker["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "tensorflow" and container["image"] == "triplet-tfx-gpu:0.1.0"
    assert container["command"] == ["python", "-m", "triplet_tfx.components.training.worker", "--spec", spec_path]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2", "cpu": "8", "memory": "30000M"}
    assert pod["serviceAccountName"] == "trainer-sa"
    assert pod["volumes"] == [{"name": "pipeline-root", "persistentVolumeClaim": {"claimName": "pipeline-claim"}}]
    assert container["volumeMounts"] == [{"name": "pipeline-root", "mountPath": "/mnt/pipeline"}]
    # The pod template is a valid Kubernetes object for the client's own models.
    template = client.ApiClient()._ApiClient__deserialize(worker["template"], "V1PodTemplateSpec")
    assert template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"

    # Every worker got the operator's TF_CONFIG: the same worker list, its own index.
    configs = [json.load(open(os.path.join(os.path.dirname(spec_path), f"tf_config_{i}.json"))) for i in range(3)]
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"] == configs[0]["cluster"] and c["environment"] == "cloud" for c in configs)
    assert len(configs[0]["cluster"]["worker"]) == 3 and list(configs[0]["cluster"]) == ["worker"]
    assert all(address.startswith("127.0.0.1:") for address in configs[0]["cluster"]["worker"])

    # The spec is the step's FnArgs, on the storage the workers share.
    spec = json.load(open(spec_path))
    assert spec["serving_model_dir"] == args.serving_model_dir and spec["train_files"] == args.train_files
    assert spec["custom_config"]["train"] == {"epochs": 1} and spec_path.startswith(args.model_run_dir)

    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"Created TFJob team-a/{name}: 3 worker(s)") for m in messages)
    assert any("Running (TFJobRunning" in m for m in messages)
    assert any(
        f"Succeeded (TFJobSucceeded: TFJob team-a/{name} successfully completed.); "
        "Worker: 0 active, 3 succeeded, 0 failed" in m
        for m in messages
    )


def test_a_failing_worker_fails_the_step_with_the_jobs_reason_and_log(tmp_path, caplog):
    args = fn_args(tmp_path, section(workers=2, gpu_count=0), fail=True)
    standin, result, error, _ = launch(tmp_path, args, caplog)
    assert result is None and error is not None
    name = tfjob.job_name(args.model_run_dir)
    text = str(error)
    assert text.startswith(
        f"TFJob team-a/{name} failed: TFJobFailed: TFJob team-a/{name} has failed because 1 Worker replica(s) failed."
    )
    assert f"--- {name}-worker-1, last 20 lines ---" in text and "worker 1: out of memory in step 3" in text
    assert (
        "resources" not in standin.created[0]["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    )  # no GPU, no limits requested
    assert any("Failed (TFJobFailed" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_the_real_worker_failing_on_missing_inputs_fails_the_step_with_its_error(tmp_path, caplog):
    """The pods' real command (worker.py's entry point) on a spec whose examples do not exist."""
    config = PipelineConfig().to_dict()
    args = fn_args(tmp_path, section(workers=2), data=config["data"], train=config["train"])
    with KubernetesStandIn(str(tmp_path)) as standin:
        with pytest.raises(tfjob.TFJobFailed) as failure:
            tfjob.launch_and_wait(args, api_client(standin.host), poll_seconds=0.5)
    text = str(failure.value)
    assert "TFJobFailed" in text and "Worker replica(s) failed." in text
    assert f"no examples match {args.train_files}" in text  # the worker's own error, from its log


def test_a_retried_launcher_waits_for_the_existing_job_and_a_stopped_one_deletes_it(tmp_path, caplog, monkeypatch):
    args = fn_args(tmp_path, section(workers=2))
    standin = KubernetesStandIn(str(tmp_path))
    with standin:
        spec_path = worker.write_spec(args)
        standin.worker_command = [sys.executable, "-c", WORKER, spec_path]
        api = api_client(standin.host)
        tfjob.launch_and_wait(args, api, poll_seconds=0.2)
        with caplog.at_level(logging.INFO, logger=tfjob.__name__):
            tfjob.launch_and_wait(args, api, poll_seconds=0.2)  # same step output: same job, 409 on create
        assert len(standin.created) == 1
        assert any("exists already: waiting for it" in r.getMessage() for r in caplog.records)

        # The step is stopped while it waits: the job (and its workers) are deleted.
        other = fn_args(tmp_path / "other", section(workers=2))
        standin.worker_command = [sys.executable, "-c", "import time; time.sleep(60)"]

        def interrupted(seconds):
            raise KeyboardInterrupt

        monkeypatch.setattr(tfjob.time, "sleep", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tfjob.launch_and_wait(other, api, poll_seconds=0.2)
        name = tfjob.job_name(other.model_run_dir)
        assert ("DELETE", f"/apis/kubeflow.org/v1/namespaces/team-a/tfjobs/{name}") in standin.requests
        assert ("team-a", name) not in standin.jobs
        requests = list(standin.requests)
    assert_granted_by_rbac(requests)


def rbac_documents():
    with open(RBAC) as f:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(f)}


def assert_granted_by_rbac(requests):
    """Each (method, path) the launcher sent is allowed by the Role's rules."""
    verbs = {"POST": "create", "GET": "get", "DELETE": "delete"}
    rules = rbac_documents()["Role"]["rules"]
    for method, path in requests:
        parts = path.strip("/").split("/")
        if parts[0] == "apis":  # /apis/GROUP/VERSION/namespaces/NS/RESOURCE[/NAME]
            group, resource = parts[1], parts[5]
        else:  # /api/v1/namespaces/NS/pods/NAME/log
            group, resource = "", f"{parts[4]}/{parts[6]}"
        assert any(
            group in rule["apiGroups"] and resource in rule["resources"] and verbs[method] in rule["verbs"]
            for rule in rules
        ), (method, path)


def test_rbac_manifest_is_valid_and_grants_what_the_launcher_calls():
    docs = rbac_documents()
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding"}
    api = client.ApiClient()
    account = api._ApiClient__deserialize(docs["ServiceAccount"], "V1ServiceAccount")
    role = api._ApiClient__deserialize(docs["Role"], "V1Role")
    binding = api._ApiClient__deserialize(docs["RoleBinding"], "V1RoleBinding")
    assert binding.role_ref.kind == "Role" and binding.role_ref.name == role.metadata.name
    assert binding.role_ref.api_group == "rbac.authorization.k8s.io"
    assert {(s.kind, s.name, s.namespace) for s in binding.subjects} == {
        ("ServiceAccount", account.metadata.name, account.metadata.namespace),
        ("ServiceAccount", "pipeline-runner", "kubeflow"),
    }
    grants = {
        (group, resource, verb)
        for rule in role.rules
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
    }
    assert grants == {("kubeflow.org", "tfjobs", verb) for verb in ("create", "get", "list", "watch", "delete")} | {
        ("", "pods/log", "get")
    }
    assert role.metadata.namespace == binding.metadata.namespace == account.metadata.namespace


def test_status_line_and_outcome_follow_the_operators_conditions():
    job = {
        "metadata": {"namespace": "ns", "name": "j"},
        "status": {
            "conditions": [
                {"type": "Created", "status": "True", "reason": "TFJobCreated", "message": "created"},
                {"type": "Running", "status": "False", "reason": "TFJobRunning", "message": "running"},
                {"type": "Restarting", "status": "True", "reason": "TFJobRestarting", "message": "again"},
            ],
            "replicaStatuses": {"Worker": {"active": 1, "failed": 1}},
        },
    }
    assert tfjob.status_line(job) == (
        "TFJob ns/j: Restarting (TFJobRestarting: again); Worker: 1 active, 0 succeeded, 1 failed"
    )
    assert tfjob.outcome(job) is None
    assert tfjob.status_line({"metadata": {"namespace": "ns", "name": "j"}}) == "TFJob ns/j: Pending"
    job["status"]["conditions"].append({"type": "Failed", "status": "True", "reason": "TFJobFailed", "message": "x"})
    assert tfjob.outcome(job)["reason"] == "TFJobFailed"


def test_job_names_are_dns_labels_and_stable():
    name = tfjob.job_name("gs://bucket/root/Trainer/model_run/12")
    assert name == tfjob.job_name("gs://bucket/root/Trainer/model_run/12") != tfjob.job_name("gs://b/other")
    assert len(f"{name}-worker-99") <= 63 and name.replace("-", "").isalnum() and name.islower()


def test_namespace_defaults_to_the_steps_own(tmp_path, monkeypatch):
    monkeypatch.setattr(tfjob, "POD_NAMESPACE_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"tfjob.namespace \(--tfjob-namespace\) is not set"):
        tfjob.default_namespace()
    (tmp_path / "namespace").write_text("profile-x\n")
    monkeypatch.setattr(tfjob, "POD_NAMESPACE_FILE", str(tmp_path / "namespace"))
    assert tfjob.default_namespace() == "profile-x"


@pytest.mark.slow  # a fresh Python importing TensorFlow
def test_a_sigterm_whose_system_exit_python_drops_still_stops_the_wait():
    completed = signalled_in_a_weakref_callback.run(
        "from triplet_tfx.components.training import tfjob", "tfjob._TerminateOnSigterm()", "SIGTERM", "SystemExit"
    )
    assert completed.stdout == "stopped\n", completed.stderr
