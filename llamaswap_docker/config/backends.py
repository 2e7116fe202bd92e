"""Backend presets: what ``backend: llama.cpp | vllm`` fills in for a model that leaves it unset.

A preset holds the vendor's documented container invocation for one platform: the official
image, the port its server listens on, its health path, and the environment, volumes and
container options its docs pass to ``docker run``. ``ModelConfig`` applies it field by field:
whatever the user wrote wins; ``env`` merges by name and ``volumes`` by container path (as
docker compose merges override files), the user's entry winning.

The platform's device options (GPU device requests, ``/dev`` nodes, groups, runtime, the
visible-devices variables) are not here but in ``runtime/devices.py``: they apply to every
backend, ``custom`` included, and only the runtime layer turns them into engine arguments.

Sources, checked for this module:

- llama.cpp images and tags, one per platform: ``docs/docker.md``,
  https://github.com/ggml-org/llama.cpp/blob/master/docs/docker.md . The ``server`` images'
  entrypoint is ``/app/llama-server`` and they set ``LLAMA_ARG_HOST=0.0.0.0``
  (``.devops/*.Dockerfile``), so ``cmd`` is llama-server's arguments. Every flag has a
  ``LLAMA_ARG_*`` variable and a flag beats its variable
  (https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md), so the preset
  sets ``LLAMA_ARG_PORT`` to the model's ``port`` and a ``--port`` in ``cmd`` still wins.
- vLLM (CUDA) ``vllm/vllm-openai``, ``--ipc=host``, the Hugging Face cache volume and
  ``HF_TOKEN``: https://docs.vllm.ai/en/stable/deployment/docker/ .
- vLLM ROCm ``vllm/vllm-openai-rocm`` (with ``--cap-add=SYS_PTRACE --security-opt
  seccomp=unconfined``): vLLM's ``docs/getting_started/installation/gpu.rocm.inc.md``
  ("Pre-built images"; AMD's ``rocm/vllm`` images are deprecated there).
- vLLM CPU ``vllm/vllm-openai-cpu:latest-x86_64``: ``cpu.x86.inc.md`` ("Pre-built images";
  ARM hosts use ``latest-arm64``: set ``image``).
- vLLM Intel GPU ``vllm/vllm-openai-xpu`` (``/dev/dri``, ``/dev/dri/by-path`` mounted,
  ``--ipc=host --privileged``): ``gpu.xpu.inc.md`` ("Pre-built images").
- vLLM publishes no Vulkan or MUSA image: such a model must name its ``image``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BACKENDS",
    "PLATFORMS",
    "GPU_PLATFORMS",
    "HF_CACHE_TARGET",
    "Backend",
    "Platform",
    "BackendPreset",
    "backend_preset",
    "default_port",
]

Backend = Literal["llama.cpp", "vllm", "custom"]
Platform = Literal["cpu", "cuda", "rocm", "vulkan", "intel", "musa"]
#: Every backend and platform name, in the order the docs list them.
BACKENDS: tuple[str, ...] = ("llama.cpp", "vllm", "custom")
PLATFORMS: tuple[str, ...] = ("cpu", "cuda", "rocm", "vulkan", "intel", "musa")
#: Platforms that give the container GPUs (everything but ``cpu``).
GPU_PLATFORMS: frozenset[str] = frozenset(PLATFORMS) - {"cpu"}

#: Container port of each backend's server (``custom``: llama-swap's habit, 8080).
_PORTS = {"llama.cpp": 8080, "vllm": 8000, "custom": 8080}

_LLAMA_CPP_IMAGE = "ghcr.io/ggml-org/llama.cpp"
#: llama.cpp's server image tag per platform (docs/docker.md).
_LLAMA_CPP_TAGS = {
    "cpu": "server",
    "cuda": "server-cuda",
    "rocm": "server-rocm",
    "vulkan": "server-vulkan",
    "intel": "server-intel",  # SYCL build
    "musa": "server-musa",
}
#: vLLM's OpenAI server image per platform; None where vLLM publishes none.
_VLLM_IMAGES: dict[str, str | None] = {
    "cpu": "vllm/vllm-openai-cpu:latest-x86_64",
    "cuda": "vllm/vllm-openai:latest",
    "rocm": "vllm/vllm-openai-rocm:latest",
    "vulkan": None,
    "intel": "vllm/vllm-openai-xpu:latest",
    "musa": None,
}
#: Where the vLLM images keep the Hugging Face cache (they run as root).
HF_CACHE_TARGET = "/root/.cache/huggingface"
#: A named volume, not ``~/.cache/huggingface``: the proxy's home differs between a shell,
#: systemd and its container, and a host path taken from it would both mount the wrong folder
#: and change the spec hash (so a restarted proxy would reap what it should adopt). Mount a
#: host folder yourself (``volumes: ["/srv/hf:/root/.cache/huggingface"]``) to share one.
HF_CACHE_VOLUME = "llamaswap-hf-cache"


@dataclass(frozen=True)
class BackendPreset:
    """Defaults one backend brings on one platform; a model's own settings win."""

    backend: str
    platform: str
    #: The official image, or None where the vendor publishes none for this platform.
    image: str | None
    port: int
    check_endpoint: str = "/health"
    env: tuple[tuple[str, str], ...] = ()
    #: Variable that carries the model's ``port`` to the server (llama.cpp: LLAMA_ARG_PORT).
    port_env: str | None = None
    volumes: tuple[str, ...] = ()
    #: Variables copied from the proxy's own environment into the container when set there
    #: (``HF_TOKEN``); resolved when the container is created, never stored in the config.
    pass_env: tuple[str, ...] = ()
    #: ``docker:`` options (``ContainerOptions`` field names) the vendor's docs pass.
    docker: dict[str, Any] = field(default_factory=dict)
    #: Variable the server reads an API key from: the proxy gives each container a key of
    #: its own, so only the proxy can use the model (llama-server: LLAMA_API_KEY, vLLM:
    #: VLLM_API_KEY; both leave /health open for health checks).
    key_env: str | None = None

    def environment(self, port: int) -> dict[str, str]:
        """The preset's variables for a server listening on ``port``."""
        env = dict(self.env)
        if self.port_env:
            env[self.port_env] = str(port)
        return env


def default_port(backend: Any) -> int:
    """The container port a backend's server listens on unless ``port`` says otherwise."""
    return _PORTS.get(backend, 8080) if isinstance(backend, str) else 8080


def backend_preset(backend: str, platform: str) -> BackendPreset | None:
    """The preset for ``backend`` on ``platform``; None for ``custom`` (everything explicit)."""
    if backend == "llama.cpp":
        return BackendPreset(
            backend,
            platform,
            image=f"{_LLAMA_CPP_IMAGE}:{_LLAMA_CPP_TAGS[platform]}",
            port=_PORTS[backend],
            # The images set LLAMA_ARG_HOST already; saying it again makes a self-built
            # llama-server image listen beyond loopback too.
            env=(("LLAMA_ARG_HOST", "0.0.0.0"),),
            port_env="LLAMA_ARG_PORT",
            # https://github.com/ggml-org/llama.cpp/tree/master/tools/server (--api-key)
            key_env="LLAMA_API_KEY",
        )
    if backend == "vllm":
        docker: dict[str, Any] = {"ipc": "host"}  # PyTorch shares tensors through /dev/shm
        volumes = [f"{HF_CACHE_VOLUME}:{HF_CACHE_TARGET}"]
        if platform == "rocm":
            docker |= {"cap_add": ["SYS_PTRACE"], "security_opt": ["seccomp=unconfined"]}
        elif platform == "intel":
            docker |= {"privileged": True}
            volumes.append("/dev/dri/by-path:/dev/dri/by-path")
        return BackendPreset(
            backend,
            platform,
            image=_VLLM_IMAGES[platform],
            port=_PORTS[backend],
            volumes=tuple(volumes),
            pass_env=("HF_TOKEN",),
            docker=docker,
            # https://docs.vllm.ai/en/latest/cli/serve.html (--api-key, VLLM_API_KEY)
            key_env="VLLM_API_KEY",
        )
    return None
