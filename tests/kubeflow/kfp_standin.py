"""Test aid: a stand-in for the Kubeflow Pipelines API server (REST, v2beta1), on 127.0.0.1.

A contract test double, not KFP: it implements the endpoints that kfp.Client (kfp 2.5,
kfp-server-api 2.0.5) calls for upload / version upload / experiment / run, with the JSON
field names of the v2beta1 API, and checks what a real server would reject: an uploaded
package that is not a PipelineSpec (parsed with kfp's own pipeline_spec_pb2), a missing or
wrong bearer token (401), a duplicate pipeline or version name (409 ALREADY_EXISTS).
Every request is recorded in `server.requests` for assertions.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

API = "/apis/v2beta1"


def _parse_spec(text: str) -> Dict[str, Any]:
    """As the KFP server does: the first YAML document must be a valid PipelineSpec."""
    documents = list(yaml.safe_load_all(text))
    spec = documents[0]
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    if not spec.get("root", {}).get("dag", {}).get("tasks"):
        raise ValueError("pipeline spec has no tasks")
    for extra in documents[1:]:
        json_format.ParseDict(extra, pipeline_spec_pb2.PlatformSpec())
    return spec


class KfpStandInState:
    def __init__(self, token: Optional[str] = None):
        self.token = token
        self.ids = itertools.count(1)
        self.pipelines: Dict[str, Dict[str, Any]] = {}
        self.versions: Dict[str, List[Dict[str, Any]]] = {}
        self.experiments: Dict[str, Dict[str, Any]] = {}
        self.runs: List[Dict[str, Any]] = []
        self.requests: List[Dict[str, Any]] = []
        self.lock = threading.Lock()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids)}"


def _filter_name(query: Dict[str, List[str]]) -> Optional[str]:
    if "filter" not in query:
        return None
    for predicate in json.loads(query["filter"][0]).get("predicates", []):
        if predicate.get("key") in ("display_name", "name"):
            return predicate.get("stringValue") or predicate.get("string_value")
    return None


class _Handler(BaseHTTPRequestHandler):
    state: KfpStandInState  # set on the subclass by KfpStandIn

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: int, message: str) -> None:
        self._send(status, {"error": message, "code": code, "message": message})

    def _handle(self, method: str) -> None:
        parsed = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        state = self.state
        with state.lock:
            state.requests.append(
                {
                    "method": method,
                    "path": parsed.path,
                    "query": query,
                    "authorization": self.headers.get("Authorization"),
                    "body": body,
                }
            )
            if state.token is not None and self.headers.get("Authorization") != f"Bearer {state.token}":
                return self._error(401, 16, "Unauthenticated: missing or invalid bearer token")
            try:
                return self._route(method, parsed.path, query, body)
            except ValueError as err:
                return self._error(400, 3, f"Invalid input error: {err}")

    def _route(self, method: str, path: str, query, body: bytes) -> None:
        state = self.state
        if method == "GET" and path == f"{API}/healthz":
            return self._send(200, {"multi_user": False})
        if method == "GET" and path == f"{API}/pipelines":
            name = _filter_name(query)
            found = [p for p in state.pipelines.values() if name is None or p["display_name"] == name]
            return self._send(200, {"pipelines": found, "total_size": len(found)} if found else {})
        if method == "POST" and path in (f"{API}/pipelines/upload", f"{API}/pipelines/upload_version"):
            package = self._uploaded_file(body)
            spec = _parse_spec(package.decode())
            name = query["name"][0]
            if path.endswith("/upload"):
                if any(p["display_name"] == name for p in state.pipelines.values()):
                    return self._error(409, 6, f"Already exists: pipeline with name {name!r} already exists")
                pipeline = {
                    "pipeline_id": state.new_id("pipeline"),
                    "display_name": name,
                    "description": query.get("description", [""])[0],
                    "namespace": query.get("namespace", [""])[0],
                    "created_at": "2024-01-01T00:00:00Z",
                }
                state.pipelines[pipeline["pipeline_id"]] = pipeline
                state.versions[pipeline["pipeline_id"]] = []
                self._add_version(pipeline["pipeline_id"], name, spec)
                return self._send(200, pipeline)
            pipeline_id = query["pipelineid"][0]
            if pipeline_id not in state.pipelines:
                return self._error(404, 5, f"Not found: pipeline {pipeline_id}")
            if any(v["display_name"] == name for v in state.versions[pipeline_id]):
                return self._error(409, 6, f"Already exists: pipeline version with name {name!r} already exists")
            return self._send(200, self._add_version(pipeline_id, name, spec))
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[-2]
            versions = list(state.versions.get(pipeline_id, []))
            if query.get("sort_by", [""])[0].endswith("desc"):
                versions.reverse()
            versions = versions[: int(query.get("page_size", ["10"])[0])]
            return self._send(200, {"pipeline_versions": versions, "total_size": len(versions)})
        if method == "GET" and path == f"{API}/experiments":
            name = _filter_name(query)
            found = [e for e in state.experiments.values() if name is None or e["display_name"] == name]
            return self._send(200, {"experiments": found, "total_size": len(found)} if found else {})
        if method == "POST" and path == f"{API}/experiments":
            request = json.loads(body)
            experiment = {
                "experiment_id": state.new_id("experiment"),
                "display_name": request["display_name"],
                "namespace": request.get("namespace") or "",
                "storage_state": "AVAILABLE",
            }
            state.experiments[experiment["experiment_id"]] = experiment
            return self._send(200, experiment)
        if method == "POST" and path == f"{API}/runs":
            request = json.loads(body)
            reference = request.get("pipeline_version_reference")
            if reference:
                versions = state.versions.get(reference.get("pipeline_id"), [])
                if not any(v["pipeline_version_id"] == reference.get("pipeline_version_id") for v in versions):
                    return self._error(404, 5, "Not found: pipeline version")
            elif request.get("pipeline_spec"):
                json_format.ParseDict(request["pipeline_spec"], pipeline_spec_pb2.PipelineSpec())
            else:
                raise ValueError("a run needs a pipeline_version_reference or a pipeline_spec")
            if request.get("experiment_id") not in state.experiments:
                return self._error(404, 5, f"Not found: experiment {request.get('experiment_id')}")
            run = {**request, "run_id": state.new_id("run"), "state": "PENDING"}
            state.runs.append(run)
            return self._send(200, run)
        return self._error(404, 5, f"no route for {method} {path}")

    def _add_version(self, pipeline_id: str, name: str, spec: Dict[str, Any]) -> Dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self.state.new_id("version"),
            "display_name": name,
            "pipeline_spec": spec,
            "created_at": "2024-01-01T00:00:00Z",
        }
        self.state.versions[pipeline_id].append(version)
        return version

    def _uploaded_file(self, body: bytes) -> bytes:
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ValueError("expected a multipart upload")
        message = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        for part in message.get_payload():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                return part.get_payload(decode=True)
        raise ValueError("no 'uploadfile' part in the upload")

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


class KfpStandIn:
    """`with KfpStandIn(token=None) as server:` serves on server.url until the block ends."""

    def __init__(self, token: Optional[str] = None):
        self.state = KfpStandInState(token)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "KfpStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def paths(self, method: Optional[str] = None) -> List[str]:
        return [r["path"] for r in self.state.requests if method is None or r["method"] == method]
