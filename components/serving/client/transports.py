"""How the client reaches a model: in-process, TF Serving's REST API, or its gRPC PredictionService.

Each transport's `predict(signature, inputs, output_names)` takes numpy inputs by input name and
returns numpy outputs by output name, so that the client's results are the same either way.
The wire formats are those of TF Serving 2.16 (tensorflow-serving-api 2.16.1; the REST API is
`tensorflow_serving/g3doc/api_rest.md`, the gRPC one `apis/prediction_service.proto`):

* REST: POST `/v1/models/<name>[/versions/<v>]:predict` with `signature_name` and either the row
  form (`instances`, when every input is batched alike) or the columnar form (`inputs`, e.g. with a
  scalar `k`); bytes travel as `{"b64": ...}`; answers are `predictions` / `outputs`, errors
  `{"error": message}` with TF Serving's HTTP status (404 NOT_FOUND, 400 INVALID_ARGUMENT,
  503 UNAVAILABLE). A NOT_FOUND is explained with the model status API, GET `/v1/models/<name>`.
  The model's signatures: GET `/v1/models/<name>[/versions/<v>]/metadata` (its SignatureDefMap).
* gRPC: `PredictionService.Predict` with `model_spec` (name, version, signature_name); NOT_FOUND is
  explained with `ModelService.GetModelStatus`. The signatures: `PredictionService.GetModelMetadata`.

Connection refused, HTTP 503 and gRPC UNAVAILABLE are retried with exponential backoff.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, Optional, Sequence, Set, Tuple

import numpy as np

from triplet_tfx.components.serving.client.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ServerUnavailableError,
    ServingError,
    ServingTimeoutError,
    VersionNotLoadedError,
)

Arrays = Dict[str, np.ndarray]
MAX_BACKOFF_SECONDS = 8.0
# Requests and answers of a large batch (256 images, 10k neighbours) exceed gRPC's 4 MB default.
GRPC_MESSAGE_LIMIT = 256 * 1024 * 1024


class _Unavailable(Exception):
    """A retryable failure: nobody listening, or the server says UNAVAILABLE / 503."""


def _retrying(call: Callable, retries: int, backoff: float, target: str):
    for attempt in range(retries + 1):
        try:
            return call()
        except _Unavailable as err:
            if attempt == retries:
                raise ServerUnavailableError(
                    f"{target} is unavailable after {retries + 1} attempt{'s' if retries else ''}: {err}"
                ) from None
            time.sleep(min(backoff * 2**attempt, MAX_BACKOFF_SECONDS))


def tf_error_text(message: str) -> str:
    """TensorFlow's error message on one line, without graph-node and stack-trace noise."""
    message = re.sub(r"\s*\[\[\{\{.*?\}\}\]\]|\s*\[Op:[^\]]*\]", "", message)
    lines = [line.strip() for line in message.splitlines()]
    return " ".join(
        line
        for line in lines
        if line
        and not line.startswith(("Graph execution error", "Detected at node", "<stack traces unavailable>", 'File "'))
    )


def saved_model_versions(base_dir: str) -> Dict[int, str]:
    """{version: path} of the numbered SavedModel folders below a TF Serving base directory."""
    if not os.path.isdir(base_dir):
        return {}
    return {
        int(name): os.path.join(base_dir, name)
        for name in os.listdir(base_dir)
        if re.fullmatch(r"\d+", name) and os.path.isfile(os.path.join(base_dir, name, "saved_model.pb"))
    }


def resolve_saved_model(path: str, version: Optional[int]) -> str:
    """A SavedModel folder, or a base directory of numbered versions (the latest, or `version`)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        if version is not None and os.path.basename(os.path.normpath(path)) != str(version):
            raise VersionNotLoadedError(
                f"SavedModel {path} is one version; give its base directory to choose version {version}"
            )
        return path
    versions = saved_model_versions(path)
    if not versions:
        raise ModelNotFoundError(
            f"no SavedModel at {path}: neither saved_model.pb nor numbered version folders holding one"
        )
    if version is None:
        return versions[max(versions)]
    if version not in versions:
        raise VersionNotLoadedError(
            f"model {path} has no version {version} (versions: {', '.join(map(str, sorted(versions)))})"
        )
    return versions[version]


class LocalTransport:
    """The SavedModel loaded in this process with tf.saved_model.load."""

    def __init__(self, path: str, version: Optional[int] = None):
        import tensorflow as tf

        self._tf = tf
        self.path = resolve_saved_model(path, version)
        self.target = f"SavedModel {self.path}"
        self._model = tf.saved_model.load(self.path)

    def index_size(self) -> Optional[int]:
        """The length of the served index's `reference_ids` variable (index.py); None without one."""
        ids = getattr(self._model, "reference_ids", None)
        shape = getattr(ids, "shape", None)
        return int(shape[0]) if shape is not None and shape.rank == 1 and shape[0] is not None else None

    def signatures(self) -> Set[str]:
        """The names of the model's signatures (REST and gRPC: from TF Serving's model metadata)."""
        return set(self._model.signatures)

    def predict(self, signature: str, inputs: Arrays, output_names: Sequence[str]) -> Arrays:
        function = self._model.signatures.get(signature)
        if function is None:
            raise InvalidRequestError(
                f"{self.target} has no signature {signature!r} (it has: {', '.join(sorted(self._model.signatures))})"
            )
        try:
            outputs = function(**{name: self._tf.constant(value) for name, value in inputs.items()})
        except self._tf.errors.InvalidArgumentError as err:
            raise InvalidRequestError(f"{self.target}, signature {signature}: {tf_error_text(err.message)}") from None
        return {name: outputs[name].numpy() for name in output_names}

    def close(self) -> None:
        pass


def _to_json(value):
    if isinstance(value, (bytes, np.bytes_)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.ndarray):
        return [_to_json(v) for v in value] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _describe(kind: str, address: str, model_name: str, version: Optional[int]) -> str:
    return f"TF Serving {kind} at {address}, model {model_name!r}" + (
        f" version {version}" if version is not None else ""
    )


class RestTransport:
    """TF Serving's REST API (port 8501)."""

    def __init__(self, url: str, model_name: str, version: Optional[int], timeout: float, retries: int, backoff: float):
        self.url, self.model_name, self.version = url.rstrip("/"), model_name, version
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.target = _describe("REST", self.url, model_name, version)

    def _model_url(self, with_version: bool) -> str:
        url = f"{self.url}/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        return url + (f"/versions/{self.version}" if with_version and self.version is not None else "")

    def _send(self, url: str, body: Optional[dict]) -> Tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            url, data=data, method="GET" if body is None else "POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text.strip() or err.reason
            if err.code == 503:
                raise _Unavailable(f"HTTP 503: {message}") from None
            return err.code, {"error": message}
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise ServingTimeoutError(f"{self.target}: no answer within {self.timeout} s") from None
            if isinstance(err.reason, ConnectionError):
                raise _Unavailable(str(err.reason)) from None
            raise ServerUnavailableError(f"{self.target}: {err.reason}") from None
        except (TimeoutError, socket.timeout):
            raise ServingTimeoutError(f"{self.target}: no answer within {self.timeout} s") from None
        except ConnectionError as err:  # e.g. the server closed the connection mid-answer
            raise _Unavailable(str(err)) from None

    def _call(self, url: str, body: Optional[dict]) -> Tuple[int, dict]:
        return _retrying(lambda: self._send(url, body), self.retries, self.backoff, self.target)

    def _checked(self, url: str, body: Optional[dict], about: str) -> dict:
        """The answer of a 200; the errors by HTTP status otherwise (`about`: what was asked)."""
        status, payload = self._call(url, body)
        if status == 404:
            raise self._not_found(payload["error"])
        if status == 400:
            raise InvalidRequestError(f"{self.target}, {about}: {tf_error_text(payload['error'])}")
        if status != 200:
            raise ServingError(f"{self.target}: HTTP {status}: {payload.get('error')}")
        return payload

    def predict(self, signature: str, inputs: Arrays, output_names: Sequence[str]) -> Arrays:
        sizes = {np.ndim(v) and len(v) for v in inputs.values()}
        rows = 0 not in sizes and len(sizes) == 1  # every input batched alike: the row form
        names = list(inputs)
        if not rows:
            body = {"signature_name": signature, "inputs": {n: _to_json(v) for n, v in inputs.items()}}
        elif len(names) == 1:
            body = {"signature_name": signature, "instances": _to_json(inputs[names[0]])}
        else:
            body = {
                "signature_name": signature,
                "instances": [{n: _to_json(inputs[n][i]) for n in names} for i in range(sizes.pop())],
            }
        payload = self._checked(self._model_url(with_version=True) + ":predict", body, f"signature {signature}")
        if rows:
            predictions = payload["predictions"]
            if len(output_names) == 1:  # one output: its name is left out
                return {output_names[0]: np.array(_from_json(predictions))}
            return {n: np.array([_from_json(p[n]) for p in predictions]) for n in output_names}
        outputs = payload["outputs"]
        if len(output_names) == 1:
            return {output_names[0]: np.array(_from_json(outputs))}
        return {n: np.array(_from_json(outputs[n])) for n in output_names}

    def index_size(self) -> Optional[int]:
        """Unknown: TF Serving's model metadata holds the signatures, not the index size."""
        return None

    def signatures(self) -> Set[str]:
        payload = self._checked(self._model_url(with_version=True) + "/metadata", None, "metadata")
        return set(payload["metadata"]["signature_def"]["signature_def"])

    def _not_found(self, message: str) -> ModelNotFoundError:
        status, payload = self._call(self._model_url(with_version=False), None)
        if status != 200:
            return ModelNotFoundError(
                f"TF Serving REST at {self.url} has no model named {self.model_name!r} ({message})"
            )
        loaded = [s["version"] for s in payload.get("model_version_status", []) if s.get("state") == "AVAILABLE"]
        if self.version is not None:
            return VersionNotLoadedError(
                f"{self.target} is not loaded (loaded versions: {', '.join(loaded) or 'none'}): {message}"
            )
        return ModelNotFoundError(f"{self.target}: {message}")

    def close(self) -> None:
        pass


class GrpcTransport:
    """TF Serving's gRPC PredictionService (port 8500), through tensorflow-serving-api."""

    def __init__(
        self, address: str, model_name: str, version: Optional[int], timeout: float, retries: int, backoff: float
    ):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self._grpc, self._tf = grpc, tf
        self.address, self.model_name, self.version = address, model_name, version
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.target = _describe("gRPC", f"grpc://{address}", model_name, version)
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
                ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
            ],
        )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _call(self, method, request):
        def once():
            try:
                return method(request, timeout=self.timeout)
            except self._grpc.RpcError as err:
                if err.code() == self._grpc.StatusCode.UNAVAILABLE:
                    raise _Unavailable(f"UNAVAILABLE: {err.details()}") from None
                raise

        return _retrying(once, self.retries, self.backoff, self.target)

    def _model_spec(self, spec, with_version: bool, signature: str = "") -> None:
        spec.name = self.model_name
        if with_version and self.version is not None:
            spec.version.value = self.version
        spec.signature_name = signature

    def _checked(self, method, request, about: str):
        """The answer; the errors by gRPC status code otherwise (`about`: what was asked)."""
        try:
            return self._call(method, request)
        except self._grpc.RpcError as err:
            code, details = err.code(), err.details()
            if code == self._grpc.StatusCode.NOT_FOUND:
                raise self._not_found(details) from None
            if code in (self._grpc.StatusCode.INVALID_ARGUMENT, self._grpc.StatusCode.FAILED_PRECONDITION):
                raise InvalidRequestError(f"{self.target}, {about}: {tf_error_text(details)}") from None
            if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ServingTimeoutError(f"{self.target}: no answer within {self.timeout} s") from None
            raise ServingError(f"{self.target}: {code.name}: {details}") from None

    def predict(self, signature: str, inputs: Arrays, output_names: Sequence[str]) -> Arrays:
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, True, signature)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(self._tf.make_tensor_proto(value))
        response = self._checked(self._predictions.Predict, request, f"signature {signature}")
        return {name: self._tf.make_ndarray(response.outputs[name]) for name in output_names}

    def index_size(self) -> Optional[int]:
        """Unknown: TF Serving's model metadata holds the signatures, not the index size."""
        return None

    def signatures(self) -> Set[str]:
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, with_version=True)
        response = self._checked(self._predictions.GetModelMetadata, request, "metadata")
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_defs)
        return set(signature_defs.signature_def)

    def _not_found(self, message: str) -> ModelNotFoundError:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, with_version=False)
        try:
            status = self._call(self._models.GetModelStatus, request)
        except self._grpc.RpcError:
            return ModelNotFoundError(
                f"TF Serving gRPC at grpc://{self.address} has no model named {self.model_name!r} ({message})"
            )
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        loaded = [str(s.version) for s in status.model_version_status if s.state == available]
        if self.version is not None:
            return VersionNotLoadedError(
                f"{self.target} is not loaded (loaded versions: {', '.join(loaded) or 'none'}): {message}"
            )
        return ModelNotFoundError(f"{self.target}: {message}")

    def close(self) -> None:
        self._channel.close()
