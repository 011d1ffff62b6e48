"""Runs the Trainer as a TFJob of the Kubeflow Training Operator, and waits for it.

It runs inside the Trainer step on the cluster when the pipeline was compiled with
`--trainer-workers N` (kubeflow/runner.py puts a `tfjob` section into the Trainer's custom_config);
run_fn then hands over to `launch_and_wait`, which:
  1. writes the worker spec (this step's FnArgs as JSON: `worker.write_spec`) below the step's
     model-run output, where every worker reads it (gs://, s3:// or the PVC every task mounts);
  2. creates a kubeflow.org/v1 TFJob of N `Worker` replicas running `worker.py`'s entry point
     (`python -m triplet_tfx.components.training.worker --spec PATH`); the operator sets each one's
     TF_CONFIG, and worker 0, the chief, exports the model into this step's Model output;
  3. polls the job, logs each change of its conditions and replica counts, and raises TFJobFailed
     with the job's reason and message (status.conditions) and the end of each worker's log.
It calls the Kubernetes API through the `kubernetes` client only: tfjobs create/get/delete and
pods/log get, which kubeflow/tfjob-rbac.yaml grants to the step's service account.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from typing import Any, Dict, Optional, Tuple

from triplet_tfx.components.signals import ResentWhenDropped
from triplet_tfx.components.training import worker

logger = logging.getLogger(__name__)

TFJOB_KEY = "tfjob"  # the Trainer custom_config section that turns the launcher on
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
# The operator requires this container name (it adds the TF_CONFIG port to it).
CONTAINER_NAME = "tensorflow"
POLL_SECONDS = 10.0
RESTART_LIMIT = 3  # worker restarts (preemptions) before the operator fails the job
LOG_TAIL_LINES = 20
# A service account's own namespace, mounted in every pod.
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class TFJobFailed(RuntimeError):
    """The TFJob failed; the message holds its reason, message and the end of the workers' logs."""


def job_name(model_run_dir: str) -> str:
    """A DNS-1035 name, the same for the same step output (a retried launcher finds its job)."""
    return "triplet-trainer-" + hashlib.sha256(model_run_dir.encode()).hexdigest()[:12]


def tfjob_manifest(name: str, namespace: str, section: Dict[str, Any], spec_path: str) -> Dict[str, Any]:
    """The TFJob: `workers` Worker replicas (worker 0 is the chief), with the image, GPUs, CPU and
    memory limits, service account and PVC of the `tfjob` section."""
    container: Dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": section["image"],
        "command": ["python", "-m", worker.WORKER_MODULE, "--spec", spec_path],
    }
    limits: Dict[str, Any] = {}
    if section.get("gpu_count"):
        limits[section["gpu_type"]] = str(section["gpu_count"])  # quantities are strings
    if section.get("cpu_limit"):
        limits["cpu"] = f"{section['cpu_limit']:g}"
    if section.get("memory_limit_gb"):
        limits["memory"] = f"{int(round(section['memory_limit_gb'] * 1000))}M"
    if limits:
        container["resources"] = {"limits": limits}
    pod: Dict[str, Any] = {"containers": [container]}
    if section.get("pvc"):
        pod["volumes"] = [{"name": "pipeline-root", "persistentVolumeClaim": {"claimName": section["pvc"]}}]
        container["volumeMounts"] = [{"name": "pipeline-root", "mountPath": section["pvc_mount_path"]}]
    if section.get("service_account"):
        pod["serviceAccountName"] = section["service_account"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TFJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/created-by": "triplet-tfx"}},
        "spec": {
            # Stop the other workers as soon as the job has failed; keep finished pods' logs.
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": RESTART_LIMIT},
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": section["workers"],
                    # Restart a worker killed from outside (exit 130/137/143: preemption, OOM kill), it resumes
                    # from the last checkpoint; any other non-zero exit fails the job.
                    "restartPolicy": "ExitCode",
                    "template": {"spec": pod},
                }
            },
        },
    }


def _true_conditions(job: Dict[str, Any]):
    return [c for c in job.get("status", {}).get("conditions", []) or [] if c.get("status") == "True"]


def outcome(job: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The job's Succeeded or Failed condition once it has finished, else None."""
    for condition in _true_conditions(job):
        if condition.get("type") in ("Succeeded", "Failed"):
            return condition
    return None


def status_line(job: Dict[str, Any]) -> str:
    """`TFJob NS/NAME: Running (TFJobRunning: ...); Worker: 2 active, 0 succeeded, 0 failed`."""
    meta = job.get("metadata", {})
    conditions = _true_conditions(job)
    state = "Pending"
    if conditions:
        last = conditions[-1]
        state = f"{last.get('type')} ({last.get('reason')}: {last.get('message')})"
    replicas = [
        f"{kind}: {counts.get('active', 0)} active, {counts.get('succeeded', 0)} succeeded, "
        f"{counts.get('failed', 0)} failed"
        for kind, counts in sorted((job.get("status", {}).get("replicaStatuses") or {}).items())
    ]
    return f"TFJob {meta.get('namespace')}/{meta.get('name')}: {state}" + "".join(f"; {r}" for r in replicas)


def default_namespace() -> str:
    try:
        with open(POD_NAMESPACE_FILE) as f:
            return f.read().strip()
    except OSError:
        raise ValueError(
            "tfjob.namespace (--tfjob-namespace) is not set and the Trainer step does not run in a "
            f"Kubernetes pod ({POD_NAMESPACE_FILE} not found): name the TFJob's namespace"
        ) from None


def default_api_client():
    """In a pod: its service account; elsewhere: the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _create(api, namespace: str, body: Dict[str, Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        logger.info(
            "Created TFJob %s/%s: %d worker(s), image %s",
            namespace,
            body["metadata"]["name"],
            body["spec"]["tfReplicaSpecs"]["Worker"]["replicas"],
            body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["image"],
        )
    except ApiException as err:
        if err.status != 409:
            raise RuntimeError(
                f"could not create TFJob {namespace}/{body['metadata']['name']}: {err.status} {err.reason}: {err.body}"
            ) from None
        # A retried launcher (same step output, same name): wait for the job already there.
        logger.info("TFJob %s/%s exists already: waiting for it", namespace, body["metadata"]["name"])


def worker_log_tails(core, namespace: str, name: str, workers: int) -> str:
    """The last lines of each worker pod's log (pods are named <job>-worker-<i> by the operator)."""
    from kubernetes.client.exceptions import ApiException

    parts = []
    for index in range(workers):
        pod = f"{name}-worker-{index}"
        try:
            text = core.read_namespaced_pod_log(pod, namespace, tail_lines=LOG_TAIL_LINES)
        except ApiException as err:
            text = f"(log not available: {err.status} {err.reason})"
        parts.append(f"--- {pod}, last {LOG_TAIL_LINES} lines ---\n{text.rstrip()}")
    return "\n".join(parts)


def wait_for(api, namespace: str, name: str, poll_seconds: float) -> Dict[str, Any]:
    """Polls the TFJob until it has finished, logging every change of its status line."""
    last = None
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        line = status_line(job)
        if line != last:
            logger.info("%s", line)
            last = line
        if outcome(job) is not None:
            return job
        time.sleep(poll_seconds)


class _TerminateOnSigterm:
    """KFP stops a cancelled step with SIGTERM: turn it into SystemExit so that the TFJob is deleted
    (sent again if Python drops the SystemExit: `signals.ResentWhenDropped`)."""

    def __enter__(self):
        self._previous = None
        self._resent = ResentWhenDropped((SystemExit,))
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._exit)
            self._resent.__enter__()
        return self

    def _exit(self, signum, _frame):
        self._resent.received(signum)
        raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        if self._previous is not None:
            self._resent.__exit__(*exc)
            signal.signal(signal.SIGTERM, self._previous)
        return False


def launch_and_wait(fn_args, api_client=None, poll_seconds: Optional[float] = None) -> Tuple[str, str]:
    """Creates the TFJob for this Trainer step and waits for it; returns (namespace, name).

    Raises TFJobFailed when the job fails. When the step itself is stopped (SIGTERM, Ctrl-C), the job
    is deleted so that no worker keeps its GPUs."""
    from kubernetes import client

    section = fn_args.custom_config[TFJOB_KEY]
    namespace = section.get("namespace") or default_namespace()
    name = job_name(fn_args.model_run_dir)
    spec_path = worker.write_spec(fn_args)
    api_client = api_client or default_api_client()
    api = client.CustomObjectsApi(api_client)
    _create(api, namespace, tfjob_manifest(name, namespace, section, spec_path))
    try:
        with _TerminateOnSigterm():
            job = wait_for(api, namespace, name, POLL_SECONDS if poll_seconds is None else poll_seconds)
    except (KeyboardInterrupt, SystemExit):
        logger.warning("Trainer step stopped: deleting TFJob %s/%s", namespace, name)
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        raise
    final = outcome(job)
    if final["type"] == "Failed":
        tails = worker_log_tails(client.CoreV1Api(api_client), namespace, name, section["workers"])
        raise TFJobFailed(f"TFJob {namespace}/{name} failed: {final.get('reason')}: {final.get('message')}\n{tails}")
    logger.info("TFJob %s/%s succeeded: the chief exported the model to %s", namespace, name, fn_args.serving_model_dir)
    return namespace, name
