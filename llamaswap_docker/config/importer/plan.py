"""What to do with one model: reading its command fills a ``Plan``; writing it edits the YAML."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import Status
from .words import Edits, Source

__all__ = ["Options", "Plan"]


@dataclass
class Plan:
    """What to do with one model."""

    model_id: str
    status: Status = "converted"
    reason: str = ""
    action: str = ""
    notes: list[str] = field(default_factory=list)
    #: Keys written before ``cmd`` (backend, platform, gpus, image) and after it.
    head: dict[str, Any] = field(default_factory=dict)
    tail: dict[str, Any] = field(default_factory=dict)
    env_set: dict[str, str] = field(default_factory=dict)
    env_drop: set[str] = field(default_factory=set)
    env_replace: bool = False  # docker run: the model's env was the docker CLI's
    #: Keys removed: a reason (the key is commented out with it) or None (deleted).
    drop: dict[str, str | None] = field(default_factory=dict)
    source: Source | None = None
    edits: Edits = field(default_factory=dict)
    #: The command's text is rebuilt from ``source`` (a wrapper's script) as one line.
    rebuilt: bool = False
    already: bool = False  # already this project's model: left alone
    #: ``docker run --name``, as written: a ``cmdStop`` that stops it is dropped silently.
    container_name: str | None = None
    #: Macros used inside a word of the command: their values must stay as they are.
    embedded: set[tuple[str, ...]] = field(default_factory=set)

    def person(self, reason: str, action: str) -> Plan:
        self.status, self.reason, self.action = "person", reason, action
        return self

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @property
    def touched(self) -> set[str]:
        keys = {*self.head, *self.tail, "cmd"}
        if self.env_set or self.env_drop or self.env_replace:
            keys.add("env")
        return keys


@dataclass
class Options:
    """The run's choices: ``--platform``, the output's folder, the environment."""

    platform: str | None
    base: Path
    environ: Mapping[str, str]
