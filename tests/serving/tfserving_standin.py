"""Test-only stand-ins for TF Serving's REST and gRPC servers (contract tests of the client).

TF Serving itself cannot run here (no binary, no Docker). These servers load the SavedModels with
TensorFlow and speak TF Serving 2.16's wire formats (tag 2.16.1 of github.com/tensorflow/serving,
commit 0d726954f36a2b6c6bfb60a4caec311f2b3e3101; tensorflow-serving-api 2.16.1):

REST (`model_servers/http_rest_api_handler.cc`, `http_rest_api_util.cc`, `util/json_tensor.cc`):
  POST /v1/models/<name>[/versions/<v>]:predict with `signature_name` and `instances` (row form: a
  list of values for one input, of objects for several) or `inputs` (columnar: one value, or an
  object by input name); `{"b64": ...}` is bytes. Answers `{"predictions": ...}` (row) or
  `{"outputs": ...}` (columnar), the output name left out when there is only one; strings are
  JSON strings unless the output name ends in `_bytes` (then b64). GET /v1/models/<name>[/versions/<v>]
  answers the GetModelStatusResponse as JSON; GET .../metadata the model spec and SignatureDefMap as
  `{"model_spec": ..., "metadata": {"signature_def": ...}}` (proto field names). Errors:
  `{"error": message}` with the HTTP status TF Serving maps the error code to (http_server.cc:
  NOT_FOUND 404, INVALID_ARGUMENT and FAILED_PRECONDITION 400, UNAVAILABLE 503).
gRPC (`apis/prediction_service.proto`, `model_service.proto`): PredictionService.Predict and
  GetModelMetadata (`signature_def`, the one metadata field TF Serving knows), and
  ModelService.GetModelStatus; outputs serialized as TF Serving does by default (AsProtoField).
Messages as TF Serving words them: "Servable not found for request: Latest(<name>)" /
  "Specific(<name>, <v>)" (core/basic_manager.cc), "Could not find any versions of model <name>"
  (get_model_status_impl.cc), 'Serving signature key "<s>" not found.' (predict_util.cc).
Version policy: TF Serving's default, the latest version of each base directory only.
`unavailable_first=N` (or the attribute `unavailable_left`) answers the next N predict requests with
UNAVAILABLE, as a server that is still loading, to test the client's retries; `delay_seconds` slows
every predict down, to test its timeout.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import threading
import time
from concurrent import futures
from typing import Dict, Optional

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from triplet_tfx.components.serving.client.transports import saved_model_versions

HTTP_STATUS = {
    "NOT_FOUND": 404,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAVAILABLE": 503,
    "UNIMPLEMENTED": 501,
}
PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:"
    r"(classify|regress|predict)"
)
STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:\/(metadata))?"
)


class StandInError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class ModelRegistry:
    """The loaded models: {name: {version: SavedModel}}, the latest version of each base directory,
    and their signatures as TF Serving reads them from saved_model.pb: {name: {version: SignatureDefMap}}."""

    def __init__(self, models: Dict[str, str], unavailable_first: int = 0):
        self.models, self.signature_defs = {}, {}
        for name, base_dir in models.items():
            version, path = max(saved_model_versions(base_dir).items())
            self.models[name] = {version: tf.saved_model.load(path)}
            with open(os.path.join(path, "saved_model.pb"), "rb") as f:
                saved_model = saved_model_pb2.SavedModel.FromString(f.read())
            self.signature_defs[name] = {
                version: get_model_metadata_pb2.SignatureDefMap(signature_def=saved_model.meta_graphs[0].signature_def)
            }
        self.unavailable_left = unavailable_first
        self.delay_seconds = 0.0  # a slow model, to test the client's timeout
        self._lock = threading.Lock()
        self.predict_requests = 0

    def servable(self, name: str, version: Optional[int]):
        versions = self.models.get(name, {})
        chosen = max(versions) if version is None and versions else version
        if chosen not in versions:
            request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise StandInError("NOT_FOUND", f"Servable not found for request: {request}")
        return chosen, versions[chosen]

    def signature(self, name: str, version: Optional[int], signature_name: str):
        chosen, model = self.servable(name, version)
        function = model.signatures.get(signature_name or "serving_default")
        if function is None:
            raise StandInError(
                "FAILED_PRECONDITION", f'Serving signature key "{signature_name or "serving_default"}" not found.'
            )
        return chosen, function

    def predict(self, name: str, version: Optional[int], signature_name: str, inputs: Dict[str, np.ndarray]):
        with self._lock:
            self.predict_requests += 1
            if self.unavailable_left > 0:
                self.unavailable_left -= 1
                raise StandInError("UNAVAILABLE", "Model is still loading (stand-in)")
        chosen, function = self.signature(name, version, signature_name)
        time.sleep(self.delay_seconds)
        specs = function.structured_input_signature[1]
        if set(inputs) != set(specs):
            sent, wanted = ",".join(sorted(inputs)), ",".join(sorted(specs))
            raise StandInError(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(inputs)}!="
                f"{len(specs)} len({{{sent}}}) != len({{{wanted}}})",
            )
        try:
            outputs = function(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
            raise StandInError("INVALID_ARGUMENT", getattr(err, "message", str(err))) from None
        return chosen, {k: v.numpy() for k, v in outputs.items()}

    def metadata(self, name: str, version: Optional[int]) -> get_model_metadata_pb2.GetModelMetadataResponse:
        chosen, _ = self.servable(name, version)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = chosen
        response.metadata["signature_def"].Pack(self.signature_defs[name][chosen])
        return response

    def status(self, name: str, version: Optional[int]) -> get_model_status_pb2.GetModelStatusResponse:
        versions = self.models.get(name, {})
        if not versions:
            raise StandInError("NOT_FOUND", f"Could not find any versions of model {name}")
        if version is not None and version not in versions:
            raise StandInError("NOT_FOUND", f"Could not find version {version} of model {name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in [version] if version is not None else sorted(versions):
            entry = response.model_version_status.add(version=v)
            entry.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


# ---------------------------------------------------------------------------------------------- REST


def _decode_json(value):
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_json(v) for v in value]
    return value


def _is_named_object(value) -> bool:
    return isinstance(value, dict) and not (set(value) == {"b64"} and isinstance(value["b64"], str))


def _encode_json(value, as_bytes: bool):
    value = np.asarray(value)
    if value.ndim:
        return [_encode_json(v, as_bytes) for v in value]
    item = value.item()
    if isinstance(item, bytes):
        return {"b64": base64.b64encode(item).decode("ascii")} if as_bytes else item.decode("utf-8")
    return item


def _array(values, spec: tf.TensorSpec) -> np.ndarray:
    return np.array(values, dtype=object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype)


def rest_predict(registry: ModelRegistry, name: str, version: Optional[int], body: dict) -> dict:
    signature_name = body.get("signature_name", "")
    if "instances" in body and "inputs" in body:
        raise StandInError(
            "INVALID_ARGUMENT", "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"
        )
    _, function = registry.signature(name, version, signature_name)
    specs = function.structured_input_signature[1]
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise StandInError("INVALID_ARGUMENT", "Expecting 'instances' to be an non-empty list/array")
        if _is_named_object(instances[0]):
            inputs = {k: _array([_decode_json(i[k]) for i in instances], s) for k, s in specs.items()}
        elif len(specs) > 1:
            raise StandInError(
                "INVALID_ARGUMENT",
                "instances is a plain list, but expecting list of objects "
                "as multiple input tensors required as per tensorinfo_map",
            )
        else:
            ((key, spec),) = specs.items()
            inputs = {key: _array(_decode_json(instances), spec)}
    elif "inputs" in body:
        given = body["inputs"]
        if not _is_named_object(given):
            if len(specs) > 1:
                raise StandInError(
                    "INVALID_ARGUMENT",
                    "inputs is a plain value/list, but expecting an object "
                    "as multiple input tensors required as per tensorinfo_map",
                )
            given = {next(iter(specs)): given}
        missing = [k for k in specs if k not in given]
        if missing:
            raise StandInError("INVALID_ARGUMENT", f"Missing named input: {missing[0]} in 'inputs' object.")
        inputs = {k: _array(_decode_json(given[k]), s) for k, s in specs.items()}
    else:
        raise StandInError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")
    _, outputs = registry.predict(name, version, signature_name, inputs)
    encoded = {k: _encode_json(v, k.endswith("_bytes")) for k, v in sorted(outputs.items())}
    if "inputs" in body:
        return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}
    if len(encoded) == 1:
        return {"predictions": next(iter(encoded.values()))}
    rows = len(next(iter(encoded.values())))
    return {"predictions": [{k: v[i] for k, v in encoded.items()} for i in range(rows)]}


def _as_json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True, including_default_value_fields=True)


def rest_status(registry: ModelRegistry, name: str, version: Optional[int]) -> dict:
    return json.loads(json_format.MessageToJson(registry.status(name, version), including_default_value_fields=True))


def rest_metadata(registry: ModelRegistry, name: str, version: Optional[int]) -> dict:
    """As TF Serving writes it (http_rest_api_handler.cc): the model spec and the unpacked SignatureDefMap."""
    response = registry.metadata(name, version)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    return {"model_spec": _as_json(response.model_spec), "metadata": {"signature_def": _as_json(signature_defs)}}


class _RestHandler(http.server.BaseHTTPRequestHandler):
    registry: ModelRegistry

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, compute) -> None:
        try:
            self._answer(200, compute())
        except StandInError as err:
            self._answer(HTTP_STATUS.get(err.code, 500), {"error": err.message})

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        match = PREDICT_PATH.fullmatch(self.path)
        if not match or match.group(4).lower() != "predict" or match.group(3):
            return self._answer(400 if not match else 501, {"error": f"Malformed request: POST {self.path}"})

        def compute():
            try:
                parsed = json.loads(body)
            except ValueError as err:
                raise StandInError("INVALID_ARGUMENT", f"JSON Parse error: {err}") from None
            version = int(match.group(2)) if match.group(2) else None
            return rest_predict(self.registry, match.group(1), version, parsed)

        self._handle(compute)

    def do_GET(self):  # noqa: N802
        match = STATUS_PATH.fullmatch(self.path)
        if not match or not match.group(1) or match.group(3):
            return self._answer(400, {"error": f"Malformed request: GET {self.path}"})
        version = int(match.group(2)) if match.group(2) else None
        self._handle(lambda: (rest_metadata if match.group(4) else rest_status)(self.registry, match.group(1), version))

    def log_message(self, *args) -> None:  # quiet
        pass


class RestStandIn:
    """TF Serving's REST API on 127.0.0.1 (a free port), in a thread. `with RestStandIn(r) as s: s.url`."""

    def __init__(self, registry: ModelRegistry):
        handler = type("Handler", (_RestHandler,), {"registry": registry})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------------------------- gRPC


def as_proto_field(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with the values in the typed repeated field, as TF Serving writes outputs."""
    proto = tensor_pb2.TensorProto()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if array.dtype.kind in "OSU":
        proto.dtype = tf.string.as_datatype_enum
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
        return proto
    dtype = tf.as_dtype(array.dtype)
    proto.dtype = dtype.as_datatype_enum
    field = {
        tf.float32: proto.float_val,
        tf.float64: proto.double_val,
        tf.int64: proto.int64_val,
        tf.bool: proto.bool_val,
    }.get(dtype, proto.int_val)
    field.extend(array.ravel().tolist())
    return proto


class _Predictions(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def Predict(self, request, context):  # noqa: N802 (the proto's name)
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        try:
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            chosen, outputs = self.registry.predict(spec.name, version, spec.signature_name, inputs)
        except StandInError as err:
            context.abort(getattr(grpc.StatusCode, err.code), err.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = chosen
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(as_proto_field(value))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        spec = request.model_spec
        try:
            if not request.metadata_field:
                raise StandInError(
                    "INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field"
                )
            for field in request.metadata_field:
                if field != "signature_def":
                    raise StandInError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
            return self.registry.metadata(spec.name, spec.version.value if spec.HasField("version") else None)
        except StandInError as err:
            context.abort(getattr(grpc.StatusCode, err.code), err.message)


class _Models(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        try:
            return self.registry.status(spec.name, spec.version.value if spec.HasField("version") else None)
        except StandInError as err:
            context.abort(getattr(grpc.StatusCode, err.code), err.message)


class GrpcStandIn:
    """TF Serving's gRPC API on 127.0.0.1 (a free port). `with GrpcStandIn(r) as s: s.address`."""

    def __init__(self, registry: ModelRegistry):
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Predictions(registry), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_Models(registry), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.url = f"grpc://{self.address}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None).wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
