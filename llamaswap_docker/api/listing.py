"""What ``/v1/models`` lists besides the local models: peers' models, selectors and the
active profile's pins, in llama-swap's shapes (``meta.llamaswap.type``: ``peer``,
``selector``, ``profile``)."""

from __future__ import annotations

from typing import Any

from llamaswap_docker.api.state import AppState
from llamaswap_docker.lifecycle import ModelState

__all__ = ["routing_entries"]

#: A selector counts as loaded when one of its targets is (llama-swap: ready or starting).
_LOADED = (ModelState.READY, ModelState.STARTING)


def routing_entries(state: AppState, created: int, listed: set[str]) -> list[dict[str, Any]]:
    """Entries for peers' models (``peer/model``), selectors (not ``unlisted``) and the
    active profile's pins; ``listed`` holds every name the local entries answer to (a pin
    that is one of them is not listed again)."""
    config = state.router.config
    models = state.manager.models
    entries: list[dict[str, Any]] = []

    def entry(entry_id: str, name: str, description: str, meta: dict[str, Any],
              **extra: Any) -> dict[str, Any]:
        item: dict[str, Any] = {"id": entry_id, "object": "model", "created": created,
                                "owned_by": "llamaswap-docker"}
        if name:
            item["name"] = name
        if description:
            item["description"] = description
        item["meta"] = {"llamaswap": meta}
        item.update(extra)
        return item

    known = set(listed)
    for peer_id, peer in config.peers.items():
        for remote in peer.models:
            fqn = f"{peer_id}/{remote}"
            known.add(fqn)
            if config.peer_model(remote) == (peer_id, remote):
                known.add(remote)  # also answers to its bare name
            entries.append(entry(fqn, f"{peer_id}: {remote}", "",
                                 {"type": "peer", "peerID": peer_id}))
    for selector_id, selector in config.selectors.items():
        known.add(selector_id)
        if selector.unlisted:
            continue
        meta: dict[str, Any] = {**selector.metadata, "type": "selector",
                                "strategy": selector.strategy, "targets": selector.targets}
        if selector.strategy == "spillover":
            meta["spillover"] = selector.settings.spillover
        first = config.resolve(selector.targets[0])
        shown = models[first].state.value if first in models else "stopped"
        for target in selector.targets[: 1 if selector.strategy == "pin" else None]:
            model_id = config.resolve(target)
            if model_id in models and models[model_id].state in _LOADED:
                shown = models[model_id].state.value
                break
        entries.append(entry(selector_id, selector.name, selector.description, meta,
                             state=shown))
    active = state.router.active_profile
    if active is not None:
        for pin, target in config.profiles[active].pins.items():
            if target and pin not in known:
                entries.append(entry(pin, "", "", {"type": "profile", "profile": active,
                                                   "target": target}))
    return entries
