"""Model lifecycle: per-model state, the pure scheduler, the container driver, the orchestrator."""

from llamaswap_docker.lifecycle.manager import ModelManager
from llamaswap_docker.lifecycle.model import Lease, ModelRuntime, ModelState, ModelStatus
from llamaswap_docker.lifecycle.scheduler import Scheduler, models_to_evict

__all__ = ["Lease", "ModelManager", "ModelRuntime", "ModelState", "ModelStatus", "Scheduler",
           "models_to_evict"]
