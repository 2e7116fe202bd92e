"""Views of a loaded config that only tests read (the proxy reads these facts its own way:
the manager resolves each preload name as it loads it, the scheduler asks ``group_of``)."""

from __future__ import annotations

from llamaswap_docker.config import Config, GroupConfig, ModelConfig


def model_named(config: Config, name: str) -> ModelConfig:
    """The model that ``name`` (id or alias) names; KeyError if none."""
    model_id = config.resolve(name)
    if model_id is None:
        raise KeyError(name)
    return config.models[model_id]


def effective_groups(config: Config) -> dict[str, GroupConfig]:
    """``groups`` plus the implicit ``"(default)"`` group when some model is ungrouped."""
    groups = dict(config.swap_groups)
    for model_id in config.models:
        group_id, group = config.group_of(model_id)
        groups.setdefault(group_id, group)
    return groups


def preload_ids(config: Config) -> list[str]:
    """The model ids ``hooks.on_startup.preload`` loads at startup (aliases resolved,
    duplicates and unknown names dropped)."""
    ids = (config.resolve(name) for name in config.hooks.on_startup.preload)
    return list(dict.fromkeys(i for i in ids if i is not None))
