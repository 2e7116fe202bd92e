"""Each package lists its public names once in ``__all__``; every listed name exists."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "llamaswap_docker",
    "llamaswap_docker.errors",
    "llamaswap_docker.logs",
    "llamaswap_docker.config",
    "llamaswap_docker.runtime",
    "llamaswap_docker.lifecycle",
    "llamaswap_docker.proxy",
    "llamaswap_docker.api",
    "llamaswap_docker.cli",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_only_names_the_module_has(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    missing = [member for member in exported if not hasattr(module, member)]
    assert missing == []


def test_every_error_derives_from_the_one_base() -> None:
    from llamaswap_docker import errors

    for member in errors.__all__:
        assert issubclass(getattr(errors, member), errors.LlamaswapError)
