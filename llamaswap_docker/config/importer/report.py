"""What an import says: per model, what became of it; for the file, its notes and exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ImportResult", "ModelReport", "Status"]

#: converted; converted with notes (what was guessed or dropped); or left to a person.
Status = Literal["converted", "noted", "person"]


@dataclass(frozen=True)
class ModelReport:
    """What became of one model: converted, converted with notes (what was guessed or
    dropped), or left to a person (why, and what to do)."""

    model_id: str
    status: Status
    notes: tuple[str, ...] = ()
    reason: str = ""
    action: str = ""


@dataclass(frozen=True)
class ImportResult:
    """The converted config's text and a report per model (in the file's order)."""

    text: str
    models: tuple[ModelReport, ...]
    #: File-level notes: keys commented out, members removed, problems left in the output.
    notes: tuple[str, ...] = ()
    #: True when the output does not load (a file-level problem no model stands for).
    broken: bool = False

    @property
    def exit_code(self) -> int:
        """0 when every model converted; 2 when some need a person (or the output is broken)."""
        needs_person = self.broken or any(m.status == "person" for m in self.models)
        return 2 if needs_person else 0
