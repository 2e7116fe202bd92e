"""Configuration of llamaswap-docker: the YAML config file and the process settings.

    load_config(path) -> Config      the config file (models, groups, docker...)
    load_config_sources(path, dir)   a file and/or a folder of files, merged (--config-dir)
    load_settings(**flags) -> Settings  LLAMASWAP_* environment variables and CLI flags
    load_demo_config(models_dir)     the embedded demo config (no config file given)

Everything raises ``llamaswap_docker.errors.ConfigError`` with file:line messages.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import yaml

from .loader import ConfigIssue, config_sources, load_config, load_config_sources, load_config_text
from .schema import (
    DEFAULT_GROUP_ID,
    Config,
    ContainerOptions,
    DockerSettings,
    EngineConfig,
    EngineTls,
    GroupConfig,
    HooksConfig,
    ModelConfig,
    ModelFilters,
    OnStartupHooks,
    PeerConfig,
    ProfileConfig,
    SelectorConfig,
    Timeouts,
    VolumeMount,
    split_command,
)
from .settings import Settings, load_settings

__all__ = [
    "DEFAULT_GROUP_ID",
    "DEMO_CONFIG_PATH",
    "DEMO_MODELS_MACRO",
    "Config",
    "ConfigIssue",
    "ContainerOptions",
    "DockerSettings",
    "EngineConfig",
    "EngineTls",
    "GroupConfig",
    "HooksConfig",
    "ModelConfig",
    "ModelFilters",
    "OnStartupHooks",
    "PeerConfig",
    "ProfileConfig",
    "SelectorConfig",
    "Settings",
    "Timeouts",
    "VolumeMount",
    "config_sources",
    "load_config",
    "load_config_sources",
    "load_config_text",
    "load_demo_config",
    "load_settings",
    "split_command",
]

#: The embedded demo config (package data: ship it in the wheel).
DEMO_CONFIG_PATH = Path(__file__).with_name("demo.yaml")
#: Macro in demo.yaml naming the host folder that holds the demo's tiny.gguf.
DEMO_MODELS_MACRO = "demo_models_dir"
#: The id the demo's real model is offered under (``llamaswap_docker.demomodel``).
REAL_MODEL_ID = "gemma-3-270m"
_TRANSCRIPT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def load_demo_config(models_dir: str | PathLike[str], real_model: str | None = None) -> Config:
    """Load the embedded demo config, mounting ``models_dir`` (holds tiny.gguf) at /models.

    ``real_model``: the file name of the demo's real model in ``models_dir``, offered as
    ``gemma-3-270m`` in the demo's swap group (None: only the two small models).
    """
    models = Path(models_dir).expanduser().resolve()
    macros = {DEMO_MODELS_MACRO: str(models)}
    if real_model is None:
        return load_config(DEMO_CONFIG_PATH, macros=macros)
    document = yaml.safe_load(DEMO_CONFIG_PATH.read_text())
    document["models"][REAL_MODEL_ID] = {
        "name": "Gemma 3 270M",
        "description": "Gemma 3 270M (base), Q4_K_M (llama.cpp, CPU): a small real model",
        "image": "llamaswap/llama-server:local",
        "port": 8080,
        # A base (not instruction-tuned) model whose GGUF has no chat template: a plain
        # "User: …/Assistant:" transcript gets real one-line answers from it.
        "cmd": ["--host", "0.0.0.0", "--port", "8080", "-m", f"/models/{real_model}",
                "-c", "4096", "--jinja", "--chat-template", _TRANSCRIPT_TEMPLATE],
        "volumes": ["${demo_models_dir}:/models:ro"],
        "checkEndpoint": "/health",
        "upstreamKeyEnv": "LLAMA_API_KEY",
        # One line, greedy: a small base model's best answer, the same every time.
        "filters": {"setParams": {"stop": ["\n"], "temperature": 0}},
    }
    document["groups"]["demo"]["members"].append(REAL_MODEL_ID)
    return load_config_text(yaml.safe_dump(document, sort_keys=False),
                            source=str(DEMO_CONFIG_PATH), macros=macros)
