"""Log lines: one event, one line, whatever a client put in the values."""

from __future__ import annotations

import pytest
from loguru import logger

from llamaswap_docker.logs import format_record


@pytest.mark.parametrize("hostile", [
    "/v1/x\nINFO forged line", "/v1/\x1b[2J\x1b[31mred", "/a\x0bb", "/a\x85b", "/a\u2028b",
    "/a\u2029b", "/a\x1cb", "/a\x7fb", "/a\x00b", "/a\rb",
])
def test_a_client_chosen_value_cannot_split_or_colour_a_log_line(hostile: str) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, format=format_record, level="INFO")
    try:
        logger.bind(path=hostile).info("request rejected: {}", hostile)
    finally:
        logger.remove(sink)
    [line] = lines
    assert len(line.rstrip("\n").splitlines()) == 1, line
    assert "\x1b" not in line and "\x00" not in line and "\x7f" not in line
    assert "path=" in line and "request rejected" in line
