"""The HTTP API: inference routes, management routes, errors in the caller's dialect."""

from llamaswap_docker.api.app import create_app

__all__ = ["create_app"]
