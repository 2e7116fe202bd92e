"""``docker run`` / ``podman run`` → this project's keys for the same container.

The image becomes ``image``, the words after it ``cmd``, and every flag its key here: ``-v`` /
``--mount`` → ``volumes``, ``-e`` → ``env``, ``--env-file`` → ``docker.envFile``, ``-p
${PORT}:N`` → ``port: N``, ``--gpus`` / ``--runtime nvidia`` / CDI devices → ``platform: cuda``
and ``gpus``, ``/dev/kfd`` → ``rocm``, ``--shm-size`` / ``--ulimit`` / ``--ipc``… →
``docker.*``. ``--name``, ``--rm``, ``-d``, ``--init`` and the local ``proxy`` go; flags the
proxy does itself (``--restart``, ``--health-*``, ``--log-*``) go with a note. A flag with no
meaning here leaves the model to a person, naming the flag.
"""

from __future__ import annotations

import csv
import re
from typing import TYPE_CHECKING, Any

from .words import Word

if TYPE_CHECKING:
    from .command import Command

__all__ = ["DockerRun"]

#: ``docker run`` flags that take a value, by every spelling, to one name.
_VALUE_FLAGS = {
    "-v": "volume", "--volume": "volume", "--mount": "mount", "-e": "env", "--env": "env",
    "--env-file": "env-file", "-p": "publish", "--publish": "publish", "--gpus": "gpus",
    "--device": "device", "--runtime": "runtime", "--ipc": "ipc", "--shm-size": "shm-size",
    "--ulimit": "ulimit", "--entrypoint": "entrypoint", "--cap-add": "cap-add",
    "--security-opt": "security-opt", "--group-add": "group-add", "-u": "user",
    "--user": "user", "--network": "network", "--net": "network", "--name": "name",
    "-m": "memory", "--memory": "memory", "--cpus": "cpus", "-l": "label", "--label": "label",
    "--add-host": "add-host", "--stop-timeout": "stop-timeout", "--restart": "restart",
    "--pull": "pull", "-h": "hostname", "--hostname": "hostname", "--log-driver": "log",
    "--log-opt": "log", "--health-cmd": "health", "--health-interval": "health",
    "--health-retries": "health", "--health-timeout": "health",
    "--health-start-period": "health", "--expose": "expose",
}
_BOOL_FLAGS = {"--rm": "rm", "-d": "detach", "--detach": "detach", "--init": "init",
               "-i": "interactive", "--interactive": "interactive", "-t": "tty",
               "--tty": "tty", "--privileged": "privileged", "--replace": "replace",
               "--no-healthcheck": "health", "-P": "publish-all", "--publish-all": "publish-all"}
#: Dropped with a note: what the proxy does instead.
_DROPPED_FLAGS = {
    "restart": "the proxy starts and stops the container itself",
    "pull": "images are pulled as `docker.pullPolicy` says (default: when missing)",
    "hostname": "the proxy reaches the container by its own name",
    "log": "the proxy reads the container's output from the engine (`logs MODEL`)",
    "health": "the proxy polls `checkEndpoint` itself",
    "expose": "the proxy reaches the container's `port` itself",
    "publish-all": "the proxy reaches the container's `port` itself",
}


class DockerRun:
    """``docker run [FLAGS] IMAGE [ARGS]`` → image, cmd and this project's keys."""

    def __init__(self, command: Command, program: str) -> None:
        self.c = command
        self.plan = command.plan
        self.program = program
        self.env: dict[str, str] = {}
        self.docker: dict[str, Any] = {}
        self.volumes: list[str] = []
        self.publish: list[tuple[str, str]] = []
        self.devices: list[str] = []
        self.groups: list[str] = []
        self.gpus: Any = "none"
        self.runtime: str | None = None
        self.network: str | None = None

    def convert(self, words: list[Word]) -> None:
        plan = self.plan
        i = 0
        while i < len(words):
            text = words[i].text
            if not text.startswith("-") or text == "-":
                break
            name, eq, inline = text.partition("=")
            raw_inline = words[i].raw.split("=", 1)[1] if "=" in words[i].raw else inline
            if not name.startswith("--") and len(name) > 2:
                if all(f"-{ch}" in _BOOL_FLAGS for ch in name[1:]):
                    for ch in name[1:]:
                        self._bool(_BOOL_FLAGS[f"-{ch}"], "true")
                    plan.edits[id(words[i])] = None
                    i += 1
                    continue
                if name[:2] in _VALUE_FLAGS:  # -p8080:80, -eKEY=VALUE
                    name, eq, inline, raw_inline = name[:2], "=", text[2:], words[i].raw[2:]
            plan.edits[id(words[i])] = None
            if name in _BOOL_FLAGS:
                self._bool(_BOOL_FLAGS[name], inline if eq else "true")
                i += 1
                continue
            if name not in _VALUE_FLAGS:
                plan.person(f"its `{self.program} run` uses {name}, which has no equivalent here",
                            f"remove {name} from the command (or do it in an image of your own) "
                            "and import again")
                return
            if eq:
                value, raw = inline, raw_inline
            elif i + 1 < len(words):
                value_word = words[i + 1]
                value, raw = value_word.text, value_word.raw
                plan.edits[id(value_word)] = None
                i += 1
            else:
                plan.person(f"its `{self.program} run` ends at {name}, which needs a value",
                            "fix the command and import again")
                return
            if not self._value(_VALUE_FLAGS[name], name, value, raw):
                return
            i += 1
        if i >= len(words):
            plan.person(f"its `{self.program} run` names no image", "fix the command")
            return
        image = words[i]
        plan.edits[id(image)] = None
        if not self._check_proxy():
            return
        self._finish(image.raw if image.raw else image.text, image.text, words[i + 1:])

    def _check_proxy(self) -> bool:
        """The model's proxy: local, or the container itself on a docker network."""
        c, plan = self.c, self.plan
        name = plan.container_name
        names = {c.macros.expand(name, record=False)} if name else set()
        names.add(plan.model_id)
        if c.proxy_is_local() or c.proxy_host in names:
            plan.drop["proxy"] = None
            return True
        if self.network is not None:
            plan.drop["proxy"] = None
            plan.note(f"proxy {c.model.get('proxy')!r} dropped: the proxy reaches the "
                      "container itself")
            return True
        plan.person(f"its `proxy` is {c.model.get('proxy')!r}, another host than the one "
                    "the container runs on",
                    "declare that host as a peer (`peers:`), or point the model at the "
                    "container this command starts")
        return False

    def _bool(self, kind: str, value: str) -> None:
        on = value.lower() not in ("false", "0")
        if kind == "privileged" and on:
            self.docker["privileged"] = True
        elif kind in _DROPPED_FLAGS:
            self.plan.note(f"{kind} flag dropped: {_DROPPED_FLAGS[kind]}")

    def _value(self, kind: str, flag: str, value: str, raw: str) -> bool:
        plan = self.plan
        if kind == "volume":
            if raw.count(":") == 0 or re.match(r"^[A-Za-z]:[\\/]", raw):
                plan.person(f"-v {raw!r} is not 'host:container': an anonymous volume or a "
                            "Windows path", "give the volume a host path or a name")
                return False
            if raw.startswith(("./", "../", ".:")) or raw.split(":", 1)[0] in (".", ".."):
                plan.note(f"-v {raw!r}: a relative host path now resolves against the output's "
                          "folder (llama-swap's docker resolved it from its working directory)")
            self.volumes.append(raw)
        elif kind == "mount":
            spec = self._mount(value)
            if spec is None:
                plan.person(f"--mount {value!r} is not a bind or volume mount",
                            "use a `volumes` entry instead")
                return False
            self.volumes.append(spec)
        elif kind == "env":
            key, sep, val = raw.partition("=")
            if sep:
                self.env[key] = val
            else:
                own = self.c.model_env()
                if key in own:
                    self.env[key] = own[key]
                else:
                    self.env[key] = f"${{env.{key}}}"
                    plan.note(f"-e {key} passed the variable from the environment of "
                              f"llama-swap: it is now read from the proxy's (${{env.{key}}}, "
                              "which must be set)")
        elif kind == "env-file":
            self.docker.setdefault("envFile", []).append(raw)
        elif kind == "publish":
            parts = value.split(":")
            container = parts[-1].split("/")[0]
            if parts[-1].endswith("/udp"):
                plan.note(f"-p {value} dropped: only the server's TCP port is reached")
                return True
            host = parts[-2] if len(parts) >= 2 else ""
            self.publish.append((host, container))
        elif kind == "gpus":
            self.gpus = _docker_gpus(value)
            if self.gpus == "invalid":
                plan.person(f"--gpus {value!r} cannot be read", "fix the value and import again")
                return False
        elif kind == "device":
            self.devices.append(raw)
        elif kind == "runtime":
            self.runtime = value
        elif kind == "ipc":
            self.docker["ipc"] = raw
        elif kind == "shm-size":
            self.docker["shmSize"] = raw
        elif kind == "memory":
            self.docker["memory"] = raw
        elif kind == "cpus":
            try:
                self.docker["cpus"] = float(value)
            except ValueError:
                plan.person(f"--cpus {value!r} is not a number", "fix the value")
                return False
        elif kind == "ulimit":
            name, sep, limits = value.partition("=")
            if not sep:
                plan.person(f"--ulimit {value!r} is not 'name=soft[:hard]'", "fix the value")
                return False
            soft, _, hard = limits.partition(":")
            ulimits = self.docker.setdefault("ulimits", {})
            ulimits[name] = _int_or_text(soft) if not hard else {
                "soft": _int_or_text(soft), "hard": _int_or_text(hard)}
        elif kind == "entrypoint":
            self.docker["entrypoint"] = raw
        elif kind in ("cap-add", "security-opt"):
            name = "capAdd" if kind == "cap-add" else "securityOpt"
            self.docker.setdefault(name, []).append(raw)
        elif kind == "group-add":
            self.groups.append(raw)
        elif kind == "user":
            self.docker["user"] = raw
        elif kind == "network":
            self.network = value
        elif kind == "name":
            self.plan.container_name = raw
        elif kind == "label":
            key, _, val = raw.partition("=")
            self.docker.setdefault("labels", {})[key] = val
        elif kind == "add-host":
            host, sep, address = raw.partition(":") if ":" in raw else raw.partition("=")
            if not sep:
                plan.person(f"--add-host {raw!r} is not 'host:ip'", "fix the value")
                return False
            self.docker.setdefault("extraHosts", {})[host] = address
        elif kind == "stop-timeout":
            if value.isdigit():
                plan.tail["stopTimeout"] = int(value)
        elif kind in _DROPPED_FLAGS:
            plan.note(f"{flag} {value} dropped: {_DROPPED_FLAGS[kind]}")
        return True

    @staticmethod
    def _mount(value: str) -> str | None:
        fields = dict(part.partition("=")[::2] for part in next(csv.reader([value])))
        kind = fields.get("type", "volume")
        source = fields.get("source") or fields.get("src")
        target = fields.get("target") or fields.get("destination") or fields.get("dst")
        if kind not in ("bind", "volume") or not source or not target:
            return None
        extra = set(fields) - {"type", "source", "src", "target", "destination", "dst",
                               "readonly", "ro"}
        if extra:
            return None
        read_only = any(k in fields and fields[k] in ("", "true", "1") for k in ("readonly", "ro"))
        return f"{source}:{target}" + (":ro" if read_only else "")

    def _finish(self, image_raw: str, image: str, args: list[Word]) -> None:
        plan, c = self.plan, self.c
        plan.head["image"] = image_raw
        platform = "cpu"
        cdi = [d for d in self.devices if d.startswith("nvidia.com/gpu=")]
        hosts = [d.split(":")[0] for d in self.devices if d.startswith("/")]
        env_nvidia = self.env.get("NVIDIA_VISIBLE_DEVICES")
        if self.gpus != "none" or self.runtime == "nvidia" or cdi:
            platform = "cuda"
            if cdi and self.gpus == "none":
                ids = [d.split("=", 1)[1] for d in cdi]
                self.gpus = None if "all" in ids else ids
                self.devices = [d for d in self.devices if d not in cdi]
            if self.gpus == "none" and env_nvidia is not None:
                self.gpus = _docker_gpus(env_nvidia)
                if self.gpus != "invalid":
                    del self.env["NVIDIA_VISIBLE_DEVICES"]
            if self.gpus in ("none", "invalid"):
                self.gpus = None
        elif "/dev/kfd" in hosts:
            platform = "rocm"
        elif self.runtime == "mthreads":
            platform = "musa"
            self.runtime = None
        elif any(h.startswith("/dev/dri") for h in hosts):
            lowered = image.lower()
            if "vulkan" in lowered:
                platform = "vulkan"
            elif any(name in lowered for name in ("intel", "sycl", "xpu", "ipex")):
                platform = "intel"
        if platform != "cpu":
            plan.head["platform"] = platform
        if platform in ("cuda",) and self.gpus not in (None, "all"):
            plan.head["gpus"] = self.gpus
        platform_devices = {"rocm": {"/dev/kfd", "/dev/dri"}, "vulkan": {"/dev/dri"},
                            "intel": {"/dev/dri"}}.get(platform, set())
        if self.devices and not set(self.devices) <= platform_devices:
            self.docker["devices"] = self.devices
        if self.groups and not (platform in ("rocm", "vulkan", "intel")
                                and set(self.groups) <= {"video", "render"}):
            self.docker["groupAdd"] = self.groups
        if self.runtime:
            self.docker["runtime"] = self.runtime
        if self.network is not None:
            plan.note(f"--network {self.network} dropped: the container joins `docker.network` "
                      "and the proxy reaches it there")
        self._port(args)
        plan.env_replace = True
        own = c.model_env()
        if own and not all(key in self.env for key in own):
            plan.note("env (the docker command's own environment, not the container's) dropped: "
                      "the container's variables are its -e flags")
        plan.env_set = dict(self.env)
        if self.volumes:
            plan.tail["volumes"] = self.volumes
        if self.docker:
            plan.tail["docker"] = self.docker

    def _port(self, args: list[Word]) -> None:
        plan = self.plan
        proxy_port = self.c.proxy_port
        chosen = None
        for host, container in self.publish:
            host = self.c.macros.expand(host, record=False)
            if host in ("${PORT}", proxy_port) or (proxy_port is None and host == "${PORT}"):
                chosen = container
        if chosen is None and len(self.publish) == 1:
            chosen = self.publish[0][1]
        for host, container in self.publish:
            if container != chosen:
                plan.note(f"-p {host}:{container} dropped: the proxy reaches only the server's "
                          "port")
        if chosen is not None:
            if chosen.isdigit():
                plan.tail["port"] = int(chosen)
            elif chosen != "${PORT}":
                plan.tail["port"] = chosen
            return
        if proxy_port and proxy_port.isdigit():
            plan.tail["port"] = int(proxy_port)
        elif not any("${PORT}" in w.text for w in args):
            plan.note("port 8080 guessed: the command publishes no port and the server is not "
                      "told ${PORT}; set `port` to the port it listens on in the container")


def _int_or_text(value: str) -> int | str:
    return int(value) if re.fullmatch(r"-?\d+", value) else value


def _docker_gpus(value: str) -> Any:
    """``--gpus`` as ``gpus``: None (all), a count, a list of ids, or "invalid"."""
    text = value.strip().strip("'")
    if text in ("all", '"all"'):
        return None
    if text.isdigit():
        return int(text)
    try:
        fields = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        return "invalid"
    ids: list[Any] = []
    count: Any = None
    in_device = False
    for item in fields:
        key, sep, val = item.strip().partition("=")
        if sep and key == "device":
            ids += [v for v in val.split(",") if v]
            in_device = True
        elif sep and key == "count":
            count = None if val == "all" else int(val) if val.isdigit() else "invalid"
            in_device = False
        elif sep and key in ("driver", "capabilities"):
            in_device = False
        elif not sep and in_device and key:
            ids.append(key)
        elif not sep and key == "all":
            count = None
        else:
            return "invalid"
    if ids:
        return [int(i) if i.isdigit() else i for i in ids]
    return count
