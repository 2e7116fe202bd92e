"""Errors raised by llamaswap-docker.

Every error the tool raises on purpose derives from ``LlamaswapError``; the API renders
it in the caller's dialect and the CLI prints it as one line.

    LlamaswapError
    ├── ConfigError                  invalid config file or settings
    ├── EngineError                  the Docker engine failed or is unreachable
    │   ├── EngineUnreachable        no engine answers at the configured URL
    │   ├── ImageNotFound            the image is missing and may not be pulled
    │   └── ImagePullFailed          the engine could not pull the image
    ├── ModelError                   a request names a model we cannot serve
    │   ├── ModelNotFound            no model or alias of that name
    │   ├── ModelStartFailed         the container exited or never became healthy
    │   ├── ModelStopped             the container went away while serving
    │   ├── UpstreamUnavailable      the model's server could not be reached
    │   │   └── UpstreamTimeout      it sent no response headers in timeouts.responseHeader
    │   ├── InsufficientGpuMemory    the model cannot fit on the GPUs (routing: fit)
    │   ├── ModelNotLoaded           an /upstream/ path that must not start a model (409)
    │   ├── NoTargetAvailable        a selector has no target it can use now
    │   └── ConcurrencyLimitExceeded too many requests in flight for a model
    └── RequestError                 the client's request is malformed
        ├── RequestTooLarge          the body is larger than maxRequestBodySize
        └── UnsupportedMediaType     the body's content type is not accepted on the route
"""

from __future__ import annotations

__all__ = [
    "LlamaswapError",
    "ConfigError",
    "EngineError",
    "EngineUnreachable",
    "ImageNotFound",
    "ImagePullFailed",
    "ModelError",
    "ModelNotFound",
    "ModelStartFailed",
    "ModelStopped",
    "UpstreamUnavailable",
    "UpstreamTimeout",
    "InsufficientGpuMemory",
    "ModelNotLoaded",
    "NoTargetAvailable",
    "ConcurrencyLimitExceeded",
    "RequestError",
    "RequestTooLarge",
    "UnsupportedMediaType",
]


class LlamaswapError(Exception):
    """Base class of every error llamaswap-docker raises on purpose."""

    #: HTTP status the API answers with when this error reaches a client.
    status_code: int = 500
    #: Short machine-readable code (OpenAI's ``error.code``).
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(LlamaswapError):
    """The config file or settings are invalid; the message names file, line and field."""

    code = "invalid_config"


class EngineError(LlamaswapError):
    """The Docker engine refused or failed an operation."""

    status_code = 503
    code = "engine_error"


class EngineUnreachable(EngineError):
    """No Docker engine answers at the configured URL.

    ``advice`` (how to start a local engine) follows the message for a person; ``fault`` is
    the message alone, for a place that knows the engine is remote or down already.
    """

    code = "engine_unreachable"

    def __init__(self, message: str, *, advice: str = "") -> None:
        super().__init__(f"{message}. {advice}." if advice else message)
        self.fault = message


class ImageNotFound(EngineError):
    """The image is not on the engine and the pull policy forbids pulling it."""

    status_code = 503
    code = "image_not_found"


class ImagePullFailed(EngineError):
    """The engine tried to pull the image and failed."""

    status_code = 503
    code = "image_pull_failed"


class ModelError(LlamaswapError):
    """A request names a model that cannot be served right now."""

    status_code = 503
    code = "model_error"


class ModelNotFound(ModelError):
    """No configured model or alias has the requested name."""

    status_code = 404
    code = "model_not_found"


class ModelStartFailed(ModelError):
    """The model's container exited while starting or never passed its health check."""

    status_code = 502
    code = "model_start_failed"


class ModelStopped(ModelError):
    """The model's container stopped while a request was being served."""

    status_code = 502
    code = "model_stopped"


class UpstreamUnavailable(ModelError):
    """The model's container runs but its server refused or dropped the connection."""

    status_code = 502
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamUnavailable):
    """The model's server sent no response headers within ``timeouts.responseHeader`` (504)."""

    status_code = 504
    code = "upstream_timeout"


class ModelNotLoaded(ModelError):
    """A request that may use a model only while it is loaded (``upstream.ignorePaths``)."""

    status_code = 409
    code = "model_not_loaded"


class NoTargetAvailable(ModelError):
    """A selector's targets are all unusable now (e.g. every one stopping)."""

    status_code = 503
    code = "no_target_available"


class InsufficientGpuMemory(ModelError):
    """The model's memory need cannot fit on the GPUs even with every evictable model stopped."""

    status_code = 503
    code = "insufficient_gpu_memory"


class ConcurrencyLimitExceeded(ModelError):
    """A model already serves as many requests as its ``concurrencyLimit`` allows."""

    status_code = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestError(LlamaswapError):
    """The client's request is malformed (bad JSON, missing ``model``)."""

    status_code = 400
    code = "invalid_request"


class RequestTooLarge(RequestError):
    """The request body is larger than ``maxRequestBodySize`` allows."""

    status_code = 413
    code = "request_too_large"


class UnsupportedMediaType(RequestError):
    """The request body's content type is not one the route accepts (415)."""

    status_code = 415
    code = "unsupported_media_type"
