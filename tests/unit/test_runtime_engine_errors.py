"""Engine errors become one actionable message (pure mapping, no engine needed)."""

from __future__ import annotations

import pytest
import requests

from llamaswap_docker.errors import EngineError, EngineUnreachable
from llamaswap_docker.runtime.engine import translate_errors


def raise_inside(exc: BaseException) -> None:
    with translate_errors("connecting to Docker"):
        raise exc


def test_socket_permission_denied_names_the_group_to_join() -> None:
    cause = PermissionError(13, "Permission denied")
    error = requests.exceptions.ConnectionError(("Connection aborted.", cause))
    with pytest.raises(EngineUnreachable, match="permission denied on the Docker socket.*DOCKER_GID"):
        raise_inside(error)


def test_missing_socket_says_how_to_start_an_engine() -> None:
    error = requests.exceptions.ConnectionError(("Connection aborted.", FileNotFoundError(2, "nope")))
    with pytest.raises(EngineUnreachable, match="not reachable.*dockerd"):
        raise_inside(error)


def test_engine_read_timeout_is_an_engine_error_not_a_crash() -> None:
    with pytest.raises(EngineError, match="did not answer in time"):
        raise_inside(requests.exceptions.ReadTimeout("read timed out"))
