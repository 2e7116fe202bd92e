"""The only package that speaks docker-py: engine connection, containers, images, labels."""

from llamaswap_docker.runtime.containers import (
    ContainerRef,
    Containers,
    ContainerState,
    Routing,
    resolve_routing,
)
from llamaswap_docker.runtime.engine import Engine, running_in_container
from llamaswap_docker.runtime.images import PullPolicy, PullProgress, ensure_image
from llamaswap_docker.runtime.spec import ContainerSpec

__all__ = [
    "ContainerRef",
    "ContainerSpec",
    "ContainerState",
    "Containers",
    "Engine",
    "PullPolicy",
    "PullProgress",
    "Routing",
    "ensure_image",
    "resolve_routing",
    "running_in_container",
]
