"""Test aid: a local stand-in of the Kubernetes API with the Kubeflow Training Operator's TFJobs.

An HTTP server on 127.0.0.1 (free port) that answers what components/training/tfjob.py calls, in the
API's own wire format (JSON objects, `Status` errors):
  POST   /apis/kubeflow.org/v1/namespaces/NS/tfjobs         create (409 AlreadyExists for a taken name)
  GET    /apis/kubeflow.org/v1/namespaces/NS/tfjobs/NAME    the TFJob with its status
  DELETE /apis/kubeflow.org/v1/namespaces/NS/tfjobs/NAME    delete (stops its workers)
  GET    /api/v1/namespaces/NS/pods/POD/log?tailLines=N     a worker's output
On creation it does what the operator and the kubelet would: for each of the N Worker replicas it
starts the container's `command` (+ `args`) as a process on this machine (`python` = this interpreter;
the image is not pulled), with the container's env and the TF_CONFIG the operator sets
({"cluster": {"worker": [host:port, ...]}, "task": {"type": "worker", "index": i}, "environment": "cloud"},
here on 127.0.0.1 with free ports instead of the job's headless services). Its status follows the
operator: conditions Created -> Running -> Succeeded (every worker exited 0) or Failed (a worker
exited non-zero: "TFJob NS/NAME has failed because 1 Worker replica(s) failed.", reason TFJobFailed,
the other workers stopped as cleanPodPolicy Running says), and replicaStatuses.Worker counts.
Not simulated: restarts (restartPolicy ExitCode / backoffLimit), scheduling, images, volumes.
Every request is recorded (`requests`: (method, path)) so tests can check them against the RBAC Role.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

import portpicker

TFJOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/tfjobs(?:/([^/]+))?$")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> Dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _Job:
    def __init__(self, body: Dict, workdir: str, base_env: Dict[str, str], worker_command: Optional[List[str]]):
        self.body = body
        meta = body["metadata"]
        self.namespace, self.name = meta["namespace"], meta["name"]
        meta.update(uid=f"uid-{self.name}", creationTimestamp=_now(), resourceVersion="1")
        worker = body["spec"]["tfReplicaSpecs"]["Worker"]
        container = next(c for c in worker["template"]["spec"]["containers"] if c["name"] == "tensorflow")
        replicas = int(worker.get("replicas", 1))
        ports = [portpicker.pick_unused_port() for _ in range(replicas)]
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        self.conditions = [self._condition("Created", "TFJobCreated", f"TFJob {self.name} is created.")]
        self.processes: List[subprocess.Popen] = []
        self.logs: List[str] = []
        argv = [
            sys.executable if part == "python" else part
            for part in worker_command or container.get("command", []) + container.get("args", [])
        ]
        for index in range(replicas):
            env = {
                **base_env,
                **{e["name"]: e["value"] for e in container.get("env", [])},
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}, "environment": "cloud"}
                ),
            }
            log_path = os.path.join(workdir, f"{self.name}-worker-{index}.log")
            self.logs.append(log_path)
            with open(log_path, "wb") as out:
                self.processes.append(
                    subprocess.Popen(
                        argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True
                    )
                )
        self.conditions.append(
            self._condition("Running", "TFJobRunning", f"TFJob {self.namespace}/{self.name} is running.")
        )

    @staticmethod
    def _condition(kind: str, reason: str, message: str) -> Dict:
        return {
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastUpdateTime": _now(),
            "lastTransitionTime": _now(),
        }

    def _finished(self) -> bool:
        return any(c["type"] in ("Succeeded", "Failed") for c in self.conditions)

    def refresh(self) -> Dict:
        codes = [p.poll() for p in self.processes]
        failed = sum(1 for code in codes if code not in (None, 0))
        if not self._finished():
            if failed:
                self.stop()  # cleanPodPolicy Running
                final = self._condition(
                    "Failed",
                    "TFJobFailed",
                    f"TFJob {self.namespace}/{self.name} has failed because {failed} Worker replica(s) failed.",
                )
            elif all(code == 0 for code in codes):
                final = self._condition(
                    "Succeeded", "TFJobSucceeded", f"TFJob {self.namespace}/{self.name} successfully completed."
                )
            else:
                final = None
            if final:
                self.conditions[-1]["status"] = "False"  # Running
                self.conditions.append(final)
        codes = [p.poll() for p in self.processes]
        replica_status = {
            "active": sum(1 for c in codes if c is None),
            "succeeded": sum(1 for c in codes if c == 0),
            "failed": sum(1 for c in codes if c not in (None, 0)),
        }
        return {
            **self.body,
            "status": {
                "conditions": self.conditions,
                "replicaStatuses": {"Worker": replica_status},
                "startTime": self.body["metadata"]["creationTimestamp"],
            },
        }

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class KubernetesStandIn:
    """`with KubernetesStandIn(workdir) as k8s:` ... `k8s.host` is http://127.0.0.1:PORT."""

    def __init__(self, workdir: str, env: Optional[Dict[str, str]] = None, worker_command: Optional[List[str]] = None):
        """worker_command, when given, replaces the container's command: a test's own worker program."""
        self.workdir = workdir
        self.worker_command = worker_command
        self.env = {**os.environ, **(env or {})}
        self.jobs: Dict[Tuple[str, str], _Job] = {}
        self.created: List[Dict] = []  # TFJob bodies as received
        self.requests: List[Tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.host = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        for job in self.jobs.values():
            job.stop()
        return False

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body, content_type="application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str):
                url = urlparse(self.path)
                with standin._lock:
                    standin.requests.append((method, url.path))
                    tfjobs, log = TFJOBS.match(url.path), POD_LOG.match(url.path)
                    if tfjobs:
                        return standin._tfjobs(self, method, *tfjobs.groups())
                    if log and method == "GET":
                        return standin._pod_log(self, *log.groups(), parse_qs(url.query))
                    return self._send(404, _status(404, "NotFound", f"the server could not find {url.path}"))

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_DELETE(self):
                self._route("DELETE")

        return Handler

    def _tfjobs(self, handler, method: str, namespace: str, name: Optional[str]):
        if method == "POST" and name is None:
            body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
            problems = [
                problem
                for ok, problem in [
                    (body.get("apiVersion") == "kubeflow.org/v1" and body.get("kind") == "TFJob", "apiVersion/kind"),
                    (body.get("metadata", {}).get("namespace", namespace) == namespace, "metadata.namespace"),
                    ("Worker" in body.get("spec", {}).get("tfReplicaSpecs", {}), "spec.tfReplicaSpecs.Worker"),
                    (
                        any(
                            c.get("name") == "tensorflow"
                            for c in body.get("spec", {})
                            .get("tfReplicaSpecs", {})
                            .get("Worker", {})
                            .get("template", {})
                            .get("spec", {})
                            .get("containers", [])
                        ),
                        "a container named tensorflow",
                    ),
                ]
                if not ok
            ]
            if problems:
                return handler._send(422, _status(422, "Invalid", f"TFJob is invalid: {', '.join(problems)}"))
            body["metadata"]["namespace"] = namespace
            key = (namespace, body["metadata"]["name"])
            if key in self.jobs:
                return handler._send(
                    409, _status(409, "AlreadyExists", f'tfjobs.kubeflow.org "{key[1]}" already exists')
                )
            self.created.append(json.loads(json.dumps(body)))
            self.jobs[key] = _Job(body, self.workdir, self.env, self.worker_command)
            return handler._send(201, self.jobs[key].refresh())
        job = self.jobs.get((namespace, name))
        if job is None:
            return handler._send(404, _status(404, "NotFound", f'tfjobs.kubeflow.org "{name}" not found'))
        if method == "GET":
            return handler._send(200, job.refresh())
        if method == "DELETE":
            job.stop()
            del self.jobs[(namespace, name)]
            return handler._send(
                200,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Success",
                    "details": {"name": name, "group": "kubeflow.org", "kind": "tfjobs"},
                },
            )
        return handler._send(405, _status(405, "MethodNotAllowed", f"{method} is not supported"))

    def _pod_log(self, handler, namespace: str, pod: str, query):
        for job in self.jobs.values():
            if job.namespace == namespace:
                for index, path in enumerate(job.logs):
                    if pod == f"{job.name}-worker-{index}":
                        with open(path, errors="replace") as f:
                            lines = f.readlines()
                        tail = int(query.get("tailLines", ["0"])[0]) or len(lines)
                        return handler._send(200, "".join(lines[-tail:]), "text/plain")
        return handler._send(404, _status(404, "NotFound", f'pods "{pod}" not found'))
