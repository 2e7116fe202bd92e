"""Configuration of llamaswap-docker: the YAML config file and the process settings.

    load_config(path) -> Config      the config file (models, groups, docker...)
    load_settings(**flags) -> Settings  LLAMASWAP_* environment variables and CLI flags
    load_demo_config(models_dir)     the embedded demo config (no config file given)

Everything raises ``llamaswap_docker.errors.ConfigError`` with file:line messages.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from .loader import ConfigIssue, load_config, load_config_text
from .schema import (
    DEFAULT_GROUP_ID,
    Config,
    ContainerOptions,
    DockerSettings,
    GroupConfig,
    HooksConfig,
    ModelConfig,
    ModelFilters,
    OnStartupHooks,
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
    "GroupConfig",
    "HooksConfig",
    "ModelConfig",
    "ModelFilters",
    "OnStartupHooks",
    "Settings",
    "VolumeMount",
    "load_config",
    "load_config_text",
    "load_demo_config",
    "load_settings",
    "split_command",
]

#: The embedded demo config (package data: ship it in the wheel).
DEMO_CONFIG_PATH = Path(__file__).with_name("demo.yaml")
#: Macro in demo.yaml naming the host folder that holds the demo's tiny.gguf.
DEMO_MODELS_MACRO = "demo_models_dir"


def load_demo_config(models_dir: str | PathLike[str]) -> Config:
    """Load the embedded demo config, mounting ``models_dir`` (holds tiny.gguf) at /models."""
    models = Path(models_dir).expanduser().resolve()
    return load_config(DEMO_CONFIG_PATH, macros={DEMO_MODELS_MACRO: str(models)})
