"""The ownership labels every container and network we create carries, applied in one place.

A container is ours when it has ``io.llamaswap.managed=true`` and our
``io.llamaswap.instance``; anything else on the engine is never touched.
"""

from __future__ import annotations

__all__ = [
    "MANAGED",
    "INSTANCE",
    "MODEL",
    "SPEC_HASH",
    "PORT",
    "KEY_ENV",
    "RESERVED_PREFIX",
    "ownership_labels",
    "instance_filters",
]

RESERVED_PREFIX = "io.llamaswap."
MANAGED = "io.llamaswap.managed"
INSTANCE = "io.llamaswap.instance"
MODEL = "io.llamaswap.model"
SPEC_HASH = "io.llamaswap.spec-hash"
# The container port the server listens on, so an adopted container can be reached again.
PORT = "io.llamaswap.port"
# The variable holding the container's API key (the name only: the key is in its env), so an
# adopted container's key can be read back.
KEY_ENV = "io.llamaswap.key-env"


def ownership_labels(
    instance: str,
    model_id: str | None = None,
    spec_hash: str | None = None,
    port: int | None = None,
    key_env: str | None = None,
) -> dict[str, str]:
    """Labels marking a resource as owned by ``instance`` (and serving ``model_id``)."""
    labels = {MANAGED: "true", INSTANCE: instance}
    if key_env is not None:
        labels[KEY_ENV] = key_env
    if model_id is not None:
        labels[MODEL] = model_id
    if spec_hash is not None:
        labels[SPEC_HASH] = spec_hash
    if port is not None:
        labels[PORT] = str(port)
    return labels


def instance_filters(instance: str, model_id: str | None = None) -> dict[str, list[str]]:
    """Engine list filters selecting the resources ``instance`` owns."""
    labels = [f"{MANAGED}=true", f"{INSTANCE}={instance}"]
    if model_id is not None:
        labels.append(f"{MODEL}={model_id}")
    return {"label": labels}
