"""The HTTP proxy: which model a request names, and the hop to the model's container."""

from llamaswap_docker.proxy.dialects import Dialect, dialect_for_path, error_payload, sse_error_event
from llamaswap_docker.proxy.forward import ClientGone, forward, read_body
from llamaswap_docker.proxy.inflight import InFlight, InFlightRequests
from llamaswap_docker.proxy.routing import (
    ModelRequest,
    Route,
    Router,
    multipart_field,
    parse_model_request,
    rewrite_body,
    split_upstream_target,
)
from llamaswap_docker.proxy.upstream import (
    HOP_BY_HOP,
    UpstreamClient,
    UpstreamError,
    request_headers,
    response_headers,
)

__all__ = [
    "ClientGone",
    "Dialect",
    "HOP_BY_HOP",
    "InFlight",
    "InFlightRequests",
    "ModelRequest",
    "Route",
    "Router",
    "UpstreamClient",
    "UpstreamError",
    "dialect_for_path",
    "error_payload",
    "forward",
    "multipart_field",
    "parse_model_request",
    "read_body",
    "request_headers",
    "response_headers",
    "rewrite_body",
    "split_upstream_target",
    "sse_error_event",
]
