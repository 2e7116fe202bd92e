"""The HTTP proxy: which model a request names, and relaying it to the model's container."""

from llamaswap_docker.proxy.routing import ModelRequest, multipart_field, parse_model_request, rewrite_body
from llamaswap_docker.proxy.upstream import (
    HOP_BY_HOP,
    RelayResponse,
    new_upstream_client,
    request_headers,
    response_headers,
)

__all__ = [
    "HOP_BY_HOP",
    "ModelRequest",
    "RelayResponse",
    "multipart_field",
    "new_upstream_client",
    "parse_model_request",
    "request_headers",
    "response_headers",
    "rewrite_body",
]
