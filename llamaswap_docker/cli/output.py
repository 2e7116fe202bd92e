"""Terminal output for the CLI: Rich consoles, the one-line error, small formatters."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.text import Text

__all__ = ["stdout", "stderr", "print_error", "print_json", "human_duration", "STATE_STYLES"]

#: Colours of model states in tables.
STATE_STYLES = {"ready": "green", "starting": "yellow", "stopping": "yellow", "asleep": "cyan", "failed": "red",
                "stopped": "dim"}


#: Columns of a console whose output goes to a pipe or file: wide enough never to cut a value.
PIPE_WIDTH = 100_000


def stdout() -> Console:
    """A console on the current ``sys.stdout`` (made per call: tests swap the stream).

    Piped, tables are not fitted to 80 columns: a container name stays whole, ready to paste
    into ``docker``."""
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=False, width=PIPE_WIDTH)
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def print_error(message: str) -> None:
    """``Error: message`` on stderr; the message is printed as is (no markup)."""
    stderr().print(Text("Error: ", style="bold red") + Text(message), soft_wrap=True)


def print_json(data: Any) -> None:
    """JSON for scripts: plain text, no colours, no wrapping."""
    print(json.dumps(data, indent=2), flush=True)


def human_duration(seconds: float | None) -> str:
    """``42s``, ``3m10s``, ``2h05m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
