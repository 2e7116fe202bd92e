"""``server.py`` overrides uvicorn internals; a uvicorn release that renames one, changes its
parameters or stops calling it would silently switch our behaviour off (SIGTERM exiting -15,
no config reload, plain-text 400s). These tests fail first, naming the hook.

Each entry is the signature the override was written for (uvicorn 0.55) and where uvicorn
calls it. When one fails after a uvicorn upgrade: read uvicorn's new code for that hook, adapt
the override in ``llamaswap_docker/server.py``, then update the entry here and the tested
range in ``pyproject.toml``.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from packaging.requirements import Requirement
from packaging.version import Version
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server

from llamaswap_docker.server import ProxyServer, _no_delay_protocol


@dataclass(frozen=True)
class Hook:
    owner: type
    name: str
    #: Parameters as the override expects them: (name, kind, default) in order.
    parameters: tuple[tuple[str, str, Any], ...]
    coroutine: bool = False
    context_manager: bool = False
    #: uvicorn code that must still call it: (method of ``owner``, text in its source).
    called_from: tuple[str, str] | None = None

    @property
    def label(self) -> str:
        owner = f"{self.owner.__module__}.{self.owner.__qualname__}"
        return f"uvicorn {uvicorn.__version__}: {owner}.{self.name}"


EMPTY = inspect.Parameter.empty
HOOKS = [
    Hook(Server, "on_tick", (("self", "POSITIONAL_OR_KEYWORD", EMPTY),
                             ("counter", "POSITIONAL_OR_KEYWORD", EMPTY)),
         coroutine=True, called_from=("main_loop", "self.on_tick(")),
    Hook(Server, "capture_signals", (("self", "POSITIONAL_OR_KEYWORD", EMPTY),),
         context_manager=True, called_from=("serve", "self.capture_signals()")),
    Hook(Server, "handle_exit", (("self", "POSITIONAL_OR_KEYWORD", EMPTY),
                                 ("sig", "POSITIONAL_OR_KEYWORD", EMPTY),
                                 ("frame", "POSITIONAL_OR_KEYWORD", EMPTY)),
         called_from=("capture_signals", "self.handle_exit")),
    Hook(Server, "__init__", (("self", "POSITIONAL_OR_KEYWORD", EMPTY),
                              ("config", "POSITIONAL_OR_KEYWORD", EMPTY))),
    *(Hook(protocol, name, parameters, called_from=caller)
      for protocol in (HttpToolsProtocol, H11Protocol)
      for name, parameters, caller in (
          ("send_400_response", (("self", "POSITIONAL_OR_KEYWORD", EMPTY),
                                 ("msg", "POSITIONAL_OR_KEYWORD", EMPTY)),
           ("data_received" if protocol is HttpToolsProtocol else "handle_events",
            "self.send_400_response(")),
          ("connection_made", (("self", "POSITIONAL_OR_KEYWORD", EMPTY),
                               ("transport", "POSITIONAL_OR_KEYWORD", EMPTY)), None))),
]


def shape(function: Any) -> tuple[tuple[str, str, Any], ...]:
    return tuple((p.name, p.kind.name, p.default)
                 for p in inspect.signature(function).parameters.values())


def written(parameters: tuple[tuple[str, str, Any], ...]) -> str:
    return "(" + ", ".join(name if default is EMPTY else f"{name}={default!r}"
                           for name, _, default in parameters) + ")"


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: f"{h.owner.__name__}.{h.name}")
def test_overridden_uvicorn_hook_has_the_signature_the_override_was_written_for(
        hook: Hook) -> None:
    function = getattr(hook.owner, hook.name, None)
    assert function is not None, (
        f"{hook.label} is gone: llamaswap_docker/server.py overrides it; adapt the override "
        f"to this uvicorn or keep uvicorn inside pyproject.toml's range")
    assert shape(function) == hook.parameters, (
        f"{hook.label} changed its signature to {inspect.signature(function)}; the override "
        f"in llamaswap_docker/server.py was written for {written(hook.parameters)}")
    assert inspect.iscoroutinefunction(function) == hook.coroutine, (
        f"{hook.label} is {'now' if not hook.coroutine else 'no longer'} a coroutine function; "
        f"the override in llamaswap_docker/server.py is not")
    if hook.context_manager:
        assert hasattr(function, "__wrapped__"), (
            f"{hook.label} is no longer a @contextmanager; ProxyServer's override is one")


@pytest.mark.parametrize("hook", [h for h in HOOKS if h.called_from],
                         ids=lambda h: f"{h.owner.__name__}.{h.name}")
def test_uvicorn_still_calls_each_overridden_hook(hook: Hook) -> None:
    assert hook.called_from is not None
    caller, call = hook.called_from
    source = inspect.getsource(getattr(hook.owner, caller))
    assert call in source, (
        f"{hook.label}: uvicorn's {hook.owner.__qualname__}.{caller} no longer contains "
        f"{call!r}, so the override in llamaswap_docker/server.py may never run")


def test_our_overrides_keep_uvicorns_signatures() -> None:
    protocol = _no_delay_protocol()
    ours = {(Server, "on_tick"): ProxyServer.on_tick,
            (Server, "handle_exit"): ProxyServer.handle_exit,
            (Server, "capture_signals"): ProxyServer.capture_signals,
            (protocol.__mro__[1], "send_400_response"): protocol.send_400_response,
            (protocol.__mro__[1], "connection_made"): protocol.connection_made}
    for (owner, name), override in ours.items():
        assert shape(override) == shape(getattr(owner, name)), (
            f"llamaswap_docker.server's override of {owner.__qualname__}.{name} takes "
            f"{inspect.signature(override)}, uvicorn's takes "
            f"{inspect.signature(getattr(owner, name))}")
    assert inspect.iscoroutinefunction(ProxyServer.on_tick)
    assert isinstance(ProxyServer(uvicorn.Config(lambda *a: None)).capture_signals(),
                      contextlib.AbstractContextManager)


def test_installed_uvicorn_is_inside_the_pinned_range() -> None:
    """The range in pyproject.toml is the one these hooks were checked against."""
    pyproject = tomllib.loads(
        (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    [pin] = [Requirement(r) for r in pyproject["project"]["dependencies"]
             if re.match(r"uvicorn\b", r)]
    assert pin.specifier, "uvicorn is not pinned to a tested range in pyproject.toml"
    assert any(s.operator == "<" for s in pin.specifier), (
        f"uvicorn's pin {pin.specifier} has no upper bound: a release that breaks a hook "
        f"would install")
    installed = Version(uvicorn.__version__)  # the one imported
    assert pin.specifier.contains(installed), (
        f"uvicorn {installed} is installed, outside the tested range {pin.specifier}")
