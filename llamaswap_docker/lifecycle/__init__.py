"""Model lifecycle: per-model state, health waits, swap decisions, the manager."""

from llamaswap_docker.lifecycle.manager import Lease, ModelManager
from llamaswap_docker.lifecycle.model import ModelRuntime, ModelState, ModelStatus
from llamaswap_docker.lifecycle.scheduler import models_to_evict

__all__ = ["Lease", "ModelManager", "ModelRuntime", "ModelState", "ModelStatus", "models_to_evict"]
