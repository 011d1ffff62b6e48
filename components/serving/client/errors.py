"""What the serving client raises. Every message names the server (or SavedModel path) and model."""

from __future__ import annotations


class ServingError(RuntimeError):
    """Base of the client's errors."""


class ServerUnavailableError(ServingError):
    """The server cannot be reached (connection refused, gRPC UNAVAILABLE, HTTP 503), after retries."""


class ServingTimeoutError(ServingError):
    """The server did not answer within the timeout."""


class ModelNotFoundError(ServingError):
    """The server (or path) has no model of that name."""


class VersionNotLoadedError(ModelNotFoundError):
    """The model exists, but not the requested version."""


class InvalidRequestError(ServingError):
    """The model refused the input (TensorFlow InvalidArgument: not an image, k out of range...)."""


class ImageInputError(ServingError, ValueError):
    """An input file is missing, unreadable or not an image; the message names it."""
