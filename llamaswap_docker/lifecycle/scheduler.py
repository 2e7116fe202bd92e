"""Pure swap decisions: which loaded models must go before another one may start.

Group semantics are llama-swap's:

* ``swap: true`` — one member of the group runs at a time;
* ``exclusive: true`` — starting a member stops the models of every other group…
* ``persistent: true`` — …except the members of persistent groups, which others never stop.

Models in no group share an implicit group with ``swap`` and ``exclusive`` both true, so by
default one model runs at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

__all__ = ["GroupRules", "models_to_evict"]


class GroupRules(Protocol):
    """What the scheduler needs of the config: each model's group and that group's flags."""

    def group_of(self, model_id: str) -> tuple[str, "GroupFlags"]: ...


class GroupFlags(Protocol):
    swap: bool
    exclusive: bool
    persistent: bool


def models_to_evict(target: str, loaded: Iterable[str], rules: GroupRules) -> set[str]:
    """The models in ``loaded`` that must stop before ``target`` may start."""
    target_group, flags = rules.group_of(target)
    evict: set[str] = set()
    for model_id in loaded:
        if model_id == target:
            continue
        group, other_flags = rules.group_of(model_id)
        if group == target_group:
            if flags.swap:
                evict.add(model_id)
        elif flags.exclusive and not other_flags.persistent:
            evict.add(model_id)
    return evict
