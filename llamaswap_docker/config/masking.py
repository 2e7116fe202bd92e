"""Secrets masked out of a config before it is shown (``config show``, the UI's model page)."""

from __future__ import annotations

import re
import shlex
from typing import Any

__all__ = ["MASK", "mask_secrets"]

#: What a secret is printed as.
MASK = "***"
#: Names (env names, macro names, flags) whose values are secrets: the secret word is the
#: name's last part (``HF_TOKEN``, ``--api-key``, ``apiKey``), so ``--tokens`` or
#: ``--token-rate`` stay visible.
SECRET_NAME = re.compile(
    r"(?:^|[-_.])(?i:token|key|secret|password|passwd|credentials?|auth)$"
    r"|[a-z](?:Token|Key|Secret|Password|Passwd|Credentials?|Auth)$")
#: ``scheme://user:password@host`` in any string: the password goes.
URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+(?=@)", re.IGNORECASE)


def mask_secrets(data: Any, name: str = "") -> Any:
    """A copy of ``data`` with secrets replaced by ``MASK``.

    ``apiKeys`` values; string values under a secret-looking key; in a ``cmd`` list, the value
    after (or joined with ``=`` to) a secret-looking flag such as ``--api-key``.
    """
    if isinstance(data, dict):
        masked: dict[Any, Any] = {}
        for key, value in data.items():
            if key == "apiKeys" and isinstance(value, list):
                masked[key] = [MASK for _ in value]
            elif isinstance(value, str | int | float) and not isinstance(value, bool) \
                    and SECRET_NAME.search(str(key)):
                masked[key] = MASK
            else:
                masked[key] = mask_secrets(value, str(key))
        return masked
    if isinstance(data, list):
        if name in ("cmd", "entrypoint"):
            return _mask_command(data)
        return [mask_secrets(item, name) for item in data]
    if isinstance(data, str):
        return URL_PASSWORD.sub(lambda match: match.group("head") + MASK, data)
    return data


def _mask_joined(text: str) -> str:
    """A shell-style command line in one string, with secret flags' values masked."""
    try:
        words = shlex.split(text)
    except ValueError:
        return text
    masked = _mask_command(words)
    return text if masked == words else shlex.join(str(word) for word in masked)


def _mask_command(args: list[Any]) -> list[Any]:
    masked: list[Any] = []
    secret_next = False
    for arg in args:
        text = str(arg)
        if " " in text and text != _mask_joined(text):  # `sh -c "server --api-key k"`
            masked.append(_mask_joined(text))
            secret_next = False
            continue
        if secret_next and not text.startswith("-"):
            masked.append(MASK)
            secret_next = False
            continue
        secret_next = False
        flag, sep, _ = text.partition("=")
        if flag.startswith("-") and SECRET_NAME.search(flag):
            if sep:
                masked.append(f"{flag}={MASK}")
                continue
            secret_next = True
        masked.append(arg)
    return masked
