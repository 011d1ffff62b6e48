"""The Python client of a served model (in process, TF Serving REST or gRPC) and the output formats of
`triplet-tfx embed` / `search`. A library that talks to the serving stage's output, not a TFX component:
it needs no TFX and no Beam (an import-linter contract says so).

    from triplet_tfx.components.serving.client import Client, ServingError

`model_client.py` (Client, image files), `transports.py` (in-process, REST, gRPC), `errors.py` (what it
raises), `result_formats.py` (JSON Lines, TSV, Projector files).
"""

from triplet_tfx.components.serving.client.errors import (
    ImageInputError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerUnavailableError,
    ServingError,
    ServingTimeoutError,
    VersionNotLoadedError,
)

# Loaded on first use: the client's image checks import TensorFlow, which `triplet-tfx --help` must not.
_MODEL_CLIENT = ("Client", "IndexSizeError", "MatchResult", "NprobeError", "SearchResult", "image_files", "read_images")


def __getattr__(name: str):
    if name in _MODEL_CLIENT:
        from triplet_tfx.components.serving.client import model_client

        return getattr(model_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ImageInputError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "ServerUnavailableError",
    "ServingError",
    "ServingTimeoutError",
    "VersionNotLoadedError",
    *_MODEL_CLIENT,
]
