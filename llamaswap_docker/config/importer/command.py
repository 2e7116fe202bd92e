"""One model's ``cmd``: which program it runs, and so how it converts, or why it cannot.

``plan_model`` reads the command (macros substituted, as llama-swap runs it) and hands it on:
``docker run`` / ``podman run`` to ``DockerRun``; ``llama-server`` and ``vllm serve`` to
``Server``. ``env K=V …``, ``K=V …`` and ``bash -c "… && exec SERVER …"`` wrappers are
unwrapped first. Anything else (compose, scripts, Windows programs, servers with no preset)
is left to a person, with why and what to do.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

from ruamel.yaml.comments import CommentedMap

from .docker_run import DockerRun
from .macros import Macros
from .plan import Options, Plan
from .servers import Server
from .words import WINDOWS_PATH, SplitError, Word, basename, display, split_words

__all__ = ["Command", "plan_model"]

_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
#: ``<LLM_ROOT_PATH>``: a template's blank, to be filled in before the command can run.
_PLACEHOLDER = re.compile(r"<[A-Za-z][A-Za-z0-9_-]*>")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "::1", "[::1]", "host.docker.internal"}
_SCRIPT_SUFFIXES = (".sh", ".bash", ".py", ".bat", ".cmd", ".ps1", ".zsh")
_SHELLS = {"bash", "sh", "zsh", "dash", "ash"}


def plan_model(model_id: str, model: CommentedMap, global_macros: Any, opts: Options) -> Plan:
    """What to do with one llama-swap model (``model``, as the YAML holds it)."""
    plan = Plan(model_id)
    if "image" in model or "backend" in model:
        plan.already = True
        return plan
    cmd = model.get("cmd")
    if isinstance(cmd, list):
        return plan.person("its `cmd` is a list: llama-swap takes one string",
                           "write `cmd` as the command line llama-swap ran and import again")
    if not isinstance(cmd, str) or not cmd.strip():
        return plan.person("it has no `cmd` (llama-swap needs one too)",
                           "add a `cmd`, or write the model here with `image` or `backend`")
    macros = Macros(model_id, model.get("macros"), global_macros, opts.environ)
    try:
        src = macros.source(display(cmd))
    except SplitError as exc:
        return plan.person(f"its `cmd` cannot be split into words: {exc}",
                           "fix the quoting in `cmd` and import again")
    plan.source = src
    host, proxy_port = _proxy_of(model, macros)
    words = src.words()
    if not words:
        return plan.person("its `cmd` is empty", "add the command that serves the model")
    holes = sorted({m for w in words for m in _PLACEHOLDER.findall(w.text)})
    if holes:
        return plan.person(f"its `cmd` has template placeholders ({', '.join(holes)}): the file "
                           "looks like a template", "fill them in and import again")
    Command(plan, model, macros, opts, host, proxy_port).convert(words)
    if plan.status != "person":
        _drop_cmd_stop(plan, model, macros)
    plan.embedded = macros.embedded
    return plan


def _proxy_of(model: Mapping[str, Any], macros: Macros) -> tuple[str | None, str | None]:
    """``proxy``'s host and port as written after macros (None where unset)."""
    proxy = model.get("proxy")
    if not isinstance(proxy, str):
        return None, None
    match = re.match(r"^\w+://(\[[^\]]*\]|[^:/]*)(?::([^/]*))?", macros.expand(proxy, record=False))
    if not match:
        return None, None
    return match.group(1), match.group(2)


def _drop_cmd_stop(plan: Plan, model: Mapping[str, Any], macros: Macros) -> None:
    stop = model.get("cmdStop")
    if stop is None:
        return
    name = plan.container_name
    try:
        words = split_words(macros.expand(str(stop), record=False))
    except SplitError:
        words = []
    matched, timeout = False, None
    if words and posixpath.basename(words[0]) in ("docker", "podman") and len(words) > 2:
        rest = words[2:]
        names = []
        i = 0
        while i < len(rest):
            if rest[i] in ("-t", "--time", "--timeout") and i + 1 < len(rest):
                timeout = rest[i + 1]
                i += 2
                continue
            if rest[i].startswith(("--time=", "--timeout=")):
                timeout = rest[i].split("=", 1)[1]
            elif not rest[i].startswith("-"):
                names.append(rest[i])
            i += 1
        matched = (words[1] in ("stop", "kill", "rm") and name is not None
                   and names == [macros.expand(name, record=False)])
    if matched:
        plan.drop["cmdStop"] = None
        if timeout and timeout.isdigit() and words[1] == "stop":
            plan.tail["stopTimeout"] = int(timeout)
        return
    plan.drop["cmdStop"] = "dropped by import: the container is stopped through the engine"
    plan.note(f"cmdStop {str(stop).strip()!r} dropped: the container is stopped through the "
              "engine (SIGTERM, then SIGKILL after stopTimeout)")


class Command:
    """Reads one model's command and fills its plan."""

    def __init__(self, plan: Plan, model: CommentedMap, macros: Macros, opts: Options,
                 proxy_host: str | None, proxy_port: str | None) -> None:
        self.plan = plan
        self.model = model
        self.macros = macros
        self.opts = opts
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        #: Variables set in front of the server (``K=V server``, ``export K=V &&``).
        self.prefix_env: dict[str, str] = {}

    def convert(self, words: list[Word]) -> None:
        plan = self.plan
        i = 0
        texts = [w.text for w in words]
        if texts and posixpath.basename(texts[0]) == "env":
            i = 1
            if i < len(texts) and texts[i].startswith("-"):
                return self._refuse_flag(texts[i], "env")
        while i < len(texts) and _ASSIGNMENT.match(texts[i]):
            key, _, value = words[i].raw.partition("=")
            self.prefix_env[key] = value
            i += 1
        if i >= len(texts):
            plan.person("its `cmd` only sets variables and runs nothing",
                        "put the server's command in `cmd`")
            return
        prog = texts[i]
        base = basename(prog)
        rest = words[i + 1:]
        written = words[i].leaf.raw if len(words[i].leaf.words) == 1 else prog
        if WINDOWS_PATH.search(written) or base.lower().endswith(".exe"):
            prog = written.strip("'\"")
            plan.person(f"it runs '{prog}', a Windows program: containers run Linux images",
                        "run the model on a Linux Docker host: write it with `backend: llama.cpp` "
                        "(or the image of its server) and the model files' Linux paths in "
                        "`volumes`")
            return
        if base in ("docker", "podman"):
            sub = [w.text for w in rest[:2]]
            if sub[:1] == ["run"] or sub == ["container", "run"]:
                skip = 1 if sub[:1] == ["run"] else 2
                self._drop_before(words, i + 1 + skip)
                DockerRun(self, base).convert(rest[skip:])
                return
            if sub[:1] == ["compose"]:
                self._compose(prog)
                return
            plan.person(f"it runs `{base} {' '.join(sub[:1])}`: only `{base} run` commands convert",
                        "write the model with the image, volumes and flags the container needs")
            return
        if base == "docker-compose":
            self._compose(prog)
            return
        if base in _SHELLS:
            self._shell(rest, prog)
            return
        if base == "sleep":
            where = f" at {self.model.get('proxy')}" if self.model.get("proxy") else ""
            plan.person(f"its `cmd` only sleeps: the model is served by something else{where}",
                        "declare that server as a peer (`peers:` with its URL and models) instead "
                        "of a model")
            return
        if base.startswith("python") and len(rest) >= 2 and rest[0].text == "-m":
            module = rest[1].text
            if module.startswith("vllm.entrypoints"):
                self._drop_before(words, i + 3)
                Server(self).vllm(rest[2:])
                return
            self._no_preset(module, f"python -m {module}")
            return
        if base.endswith(_SCRIPT_SUFFIXES) or base.startswith("python"):
            plan.person(f"it runs a script ({prog!r}) on the host: what the script starts is "
                        "not visible here",
                        "write the model with the server the script runs: `backend: llama.cpp` or "
                        "`vllm` with the script's flags in `cmd`, or an image that has the script")
            return
        if "ik_llama" in prog.lower():
            self._no_preset(prog, "ik_llama.cpp's llama-server (no official image)")
            return
        if base.startswith("llama-server"):
            self._drop_before(words, i + 1)
            Server(self).llama_server(prog, rest)
            return
        if base == "vllm" and rest and rest[0].text == "serve":
            self._drop_before(words, i + 2)
            Server(self).vllm(rest[1:])
            return
        self._no_preset(prog, base)

    def model_env(self) -> dict[str, str]:
        """The model's ``env`` (llama-swap's list, or a mapping), as written."""
        env = self.model.get("env")
        out: dict[str, str] = {}
        if isinstance(env, list):
            for item in env:
                key, sep, value = str(item).partition("=")
                if sep:
                    out[key.strip()] = value
        elif isinstance(env, dict):
            out = {str(k): "" if v is None else str(v) for k, v in env.items()}
        return out

    def proxy_is_local(self) -> bool:
        """Whether ``proxy`` is unset or names this host."""
        host = self.proxy_host
        return host is None or host in _LOCAL_HOSTS or host.startswith("127.")

    def _drop_before(self, words: list[Word], index: int) -> None:
        for word in words[:index]:
            self.plan.edits[id(word)] = None

    def _refuse_flag(self, flag: str, program: str) -> None:
        self.plan.person(f"`{program}` is run with {flag!r}, which has no equivalent here",
                         "write the model by hand, or remove the flag and import again")

    def _compose(self, prog: str) -> None:
        self.plan.person("it starts a docker compose service: the service's image, command and "
                         "volumes are in the compose file, not here",
                         "copy the service's `image`, `command` (as `cmd`), `volumes`, "
                         "`environment` and GPU settings into this model")

    def _no_preset(self, prog: str, name: str) -> None:
        self.plan.person(f"it runs {name}, which has no backend preset here",
                         f"set `image` to an image that has {basename(prog)!r} and `cmd` to its "
                         "arguments (with `port` and `volumes`)")

    def _shell(self, rest: list[Word], prog: str) -> None:
        """``bash -c "cd …; export K=V && exec SERVER …"``: the server, with the variables."""
        plan = self.plan
        script_at = None
        for index, word in enumerate(rest):
            if re.match(r"^-[a-z]*c[a-z]*$", word.text):  # -c, -lc, -ec
                script_at = index + 1
                break
            if not word.text.startswith("-"):
                break
        if script_at is None or script_at >= len(rest):
            plan.person(f"it runs a shell script with {prog!r}",
                        "write the model with the server the script runs")
            return
        script = rest[script_at]
        try:
            inner = self.macros.source(script.raw if script.raw is not None else script.text)
        except SplitError as exc:
            plan.person(f"its `{prog} -c` script cannot be split into words: {exc}",
                        "fix the quoting and import again")
            return
        commands: list[list[Word]] = [[]]
        for word in inner.words():
            text = word.text
            if text in ("&&", ";"):
                commands.append([])
                continue
            if text in ("|", "||", ">", ">>", "<", "&") or "$(" in text or "`" in text or \
                    re.match(r"^\d?>", text):
                plan.person(f"its `{prog} -c` script uses {text!r}: only `cd`, `export`, `sleep` "
                            "and `exec SERVER` unwrap",
                            "write the model with the server the script runs")
                return
            if text.endswith(";"):
                word.text = text[:-1]
                commands[-1].append(word)
                commands.append([])
                continue
            commands[-1].append(word)
        commands = [c for c in commands if c]
        if not commands:
            plan.person(f"its `{prog} -c` script is empty", "put the server's command in `cmd`")
            return
        for command in commands[:-1]:
            head = command[0].text
            if head == "export":
                for word in command[1:]:
                    key, sep, value = word.raw.partition("=")
                    if sep:
                        self.prefix_env[key] = value
            elif head in ("cd", "sleep", "true", ":"):
                plan.note(f"`{' '.join(w.text for w in command)}` before the server dropped "
                          f"(unwrapped from `{prog} -c`)")
            elif _ASSIGNMENT.match(head) and all(_ASSIGNMENT.match(w.text) for w in command):
                for word in command:
                    key, _, value = word.raw.partition("=")
                    self.prefix_env[key] = value
            else:
                plan.person(f"its `{prog} -c` script runs {head!r} before the server",
                            "do that step in an image of your own, or drop it, and import again")
                return
        last = commands[-1]
        if last[0].text == "exec":
            last = last[1:]
        # Everything before the server goes: the steps, their `&&`, and `exec`.
        all_words = inner.words()
        for word in all_words[:all_words.index(last[0])]:
            plan.edits[id(word)] = None
        plan.source = inner
        plan.rebuilt = True
        self.convert(last)
