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
    "DEVICES",
    "VRAM",
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
# The GPUs placement put the container on ("0,1") and the bytes it holds on each: a restarted
# proxy adopts it there and counts its memory (placement is not in the spec hash).
DEVICES = "io.llamaswap.devices"
VRAM = "io.llamaswap.vram"


def ownership_labels(
    instance: str,
    model_id: str | None = None,
    spec_hash: str | None = None,
    port: int | None = None,
    key_env: str | None = None,
    devices: tuple[str, ...] | None = None,
    vram: int | None = None,
) -> dict[str, str]:
    """Labels marking a resource as owned by ``instance`` (and serving ``model_id``)."""
    labels = {MANAGED: "true", INSTANCE: instance}
    if devices is not None:
        labels[DEVICES] = ",".join(devices)
        if vram is not None:
            labels[VRAM] = str(vram)
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
