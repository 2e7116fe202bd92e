"""One run of the import over the whole file: plan every model, write the plans into the
document, check the result with this project's loader, and repeat until it loads.

A macro the conversion changes is rewritten where it is defined when every converted model
that uses it changes it alike (``macro_rewrites``), and inlined into the models otherwise.
The loader has the last word: a model it refuses is left out with its message, a kept key it
refuses is commented out; group members and preloads that name a model left out go too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ...errors import ConfigError
from ..compat import LLAMA_SWAP_KEYS
from ..loader import load_config_text
from ..schema import Config, ModelConfig
from .command import plan_model
from .macros import macro_rewrites
from .plan import Options, Plan
from .report import ImportResult, ModelReport, Status
from .words import emit, one_line, tokenize
from .yamledit import (
    Actions,
    comment_out,
    delete,
    dump,
    is_sentinel,
    load,
    note_at,
    note_before,
    position,
    put,
    scalar_like,
)

__all__ = ["Import"]

_HEADER = ("# Converted from a llama-swap config by `llamaswap-docker config import`.\n"
           "# Lines starting with `# import` say what was guessed; models and keys left "
           "out are commented out where they were, with the reason.\n")


class _AnyEnv(Mapping[str, str]):
    """Every variable set: ``${env.X}`` must not fail a check made away from the server."""

    def __getitem__(self, key: str) -> str:
        return "set-at-run-time"

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class Import:
    """One run of the import: plans, builds, checks with the loader, repeats until it loads."""

    def __init__(self, text: str, source: str, platform: str | None, base: Path,
                 environ: Mapping[str, str]) -> None:
        self.text = text
        self.source = source
        self.opts = Options(platform, base, environ)
        _, doc = load(text, source)
        #: Model ids as text, and the keys as the YAML wrote them (``1:`` is an int).
        self.keys = {str(k): k for k in doc["models"]}
        self.model_ids = list(self.keys)
        #: Models the loader refused after conversion: (reason, action).
        self.refused: dict[str, tuple[str, str]] = {}
        #: Kept keys the loader refused: location → message.
        self.bad_keys: dict[tuple[str, ...], str] = {}
        self.file_notes: list[str] = []

    def run(self) -> ImportResult:
        seen: set[tuple[str, str]] = set()
        for _ in range(len(self.model_ids) + 8):
            text, plans = self._build()
            problems = self._check(text)
            if not problems:
                if plans and all(p.status == "person" for p in plans.values()):
                    self._file_note("no model converted: the output loads, and serves nothing "
                                    "until a model is added")
                return self._result(text, plans, broken=False)
            progressed = False
            for field_, message in problems:
                if (field_, message) in seen:
                    continue
                seen.add((field_, message))
                progressed |= self._blame(field_, message, plans)
            if not progressed:
                for field_, message in problems:
                    note = f"the output does not load: {field_}: {message}" if field_ else \
                        f"the output does not load: {message}"
                    if note not in self.file_notes:
                        self.file_notes.append(note)
                return self._result(text, plans, broken=True)
        text, plans = self._build()
        return self._result(text, plans, broken=True)

    # -- checking --------------------------------------------------------------------------

    def _check(self, text: str) -> list[tuple[str, str]]:
        try:
            load_config_text(text, source="import", base_dir=self.opts.base, environ=_AnyEnv())
        except ConfigError as exc:
            issues = getattr(exc, "errors", None) or []
            return [(issue.field, issue.message) for issue in issues] or [("", str(exc))]
        return []

    def _blame(self, field_: str, message: str, plans: dict[str, Plan]) -> bool:
        """Leave out the model, or comment out the kept key, that a loader problem is about.

        A problem with what the import wrote (or with a model's aliases, which llama-swap
        refuses alike) leaves the model to a person; one with a key kept as the user wrote it
        comments that key out. Returns False when nothing can be blamed."""
        if field_.startswith("models."):
            rest = field_[len("models."):]
            model_id = _longest_key(rest, self.model_ids)
            plan = plans.get(model_id) if model_id is not None else None
            if plan is None or plan.status == "person":
                return False
            where = rest[len(model_id):].lstrip(".")  # type: ignore[arg-type]
            key = re.split(r"[.\[]", where, maxsplit=1)[0]
            if plan.already or not key or key in plan.touched or key in ("aliases", "filters"):
                also = ""
                if key in ("aliases", "filters") and "alias" in message:
                    also = " (llama-swap refuses this too)"
                self.refused.setdefault(plan.model_id, (
                    f"the converted model does not load: {where or 'the model'}: {message}{also}",
                    "fix this in the llama-swap config and import again (or fix the output)"))
            else:
                self.bad_keys[("models", plan.model_id, key)] = message
            return True
        top = re.split(r"[.\[]", field_, maxsplit=1)[0]
        if not top or top == "models":
            return False
        _, doc = load(self.text, self.source)
        if top not in doc:
            return False
        rest = field_[len(top):].lstrip(".")
        value = doc.get(top)
        sub = None
        if isinstance(value, dict) and rest and len(value) > 1:
            sub = _longest_key(rest, (str(k) for k in value))
        if sub is None or top == "hooks":
            self.bad_keys[(top,)] = message
            return True
        self.bad_keys[(top, sub)] = message
        if all((top, str(k)) in self.bad_keys for k in value):
            # Nothing of it is left: comment out the key itself, with its children's reasons.
            self.bad_keys[(top,)] = "; ".join(dict.fromkeys(
                self.bad_keys.pop((top, str(k))) for k in value))
        return True

    # -- building --------------------------------------------------------------------------

    def _build(self) -> tuple[str, dict[str, Plan]]:
        yaml, doc = load(self.text, self.source)
        models: CommentedMap = doc["models"]
        global_macros = doc.get("macros")
        plans: dict[str, Plan] = {}
        for model_id in self.model_ids:
            entry = models[self.keys[model_id]]
            if not isinstance(entry, CommentedMap):
                plans[model_id] = Plan(model_id).person(
                    "it is not a mapping of settings", "write it as `ID: {cmd: …}`")
                continue
            plan = plan_model(model_id, entry, global_macros, self.opts)
            if model_id in self.refused and plan.status != "person":
                plan.person(*self.refused[model_id])
            plans[model_id] = plan
        actions: Actions = {}
        aliases = {model_id: [str(a) for a in models[key]["aliases"]]
                   for model_id, key in self.keys.items() if isinstance(models[key], dict)
                   and isinstance(models[key].get("aliases"), list)}
        rewritten = macro_rewrites(doc, plans)
        for key, text in rewritten.items():
            holder = doc["macros"] if key[0] == "global" else models[key[1]]["macros"]
            holder[key[-1]] = scalar_like(holder[key[-1]], text)
        for model_id in self.model_ids:
            plan = plans[model_id]
            if plan.status == "person":
                self._leave_out(models, self.keys[model_id], plan, actions)
            elif not plan.already:
                self._apply_plan(models[self.keys[model_id]], plan, rewritten, actions)
        self._unknown_keys(doc, plans, actions)
        self._fix_references(doc, plans, aliases, actions)
        for location, message in self.bad_keys.items():
            parent = doc
            for depth, part in enumerate(location[:-1]):
                if depth == 1 and location[0] == "models":
                    part = self.keys.get(part, part)  # the key as the YAML wrote it
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, CommentedMap) and location[-1] in parent:
                if location[0] == "models" and plans.get(location[1]) and \
                        plans[location[1]].status == "person":
                    continue
                comment_out(parent, location[-1], actions,
                             f"left out by import: config check says: {message}")
        return _HEADER + dump(yaml, doc, actions), plans

    def _apply_plan(self, entry: CommentedMap, plan: Plan,
                    rewritten: Mapping[tuple[str, ...], str],
                    actions: Actions) -> None:
        if entry.fa.flow_style():
            entry.fa.set_block_style()
        assert plan.source is not None
        text = emit(plan.source, plan.edits, rewritten)
        if plan.rebuilt:
            text = one_line(text)
        has_args = bool(tokenize(text))
        own = {k for k, _ in entry.non_merged_items()}
        for key, reason in plan.drop.items():
            if key in own:
                if reason is None:
                    delete(entry, key, actions)
                else:
                    comment_out(entry, key, actions, reason)
        if has_args:
            original = entry["cmd"]
            if plan.rebuilt:
                entry["cmd"] = text
            else:
                entry["cmd"] = scalar_like(original, text)
        # New keys go before `cmd`: the comments after `cmd` (often the next model's heading)
        # stay attached to it, so they keep their place.
        new = dict(plan.head)
        for name, value in plan.tail.items():
            if name == "volumes" and isinstance(entry.get("volumes"), list):
                entry["volumes"].extend(value)
            else:
                new[name] = value
        env_changed = bool(plan.env_replace or plan.env_set or plan.env_drop)
        env_value = self._env_value(entry, plan) if env_changed else None
        if env_value is not None:
            if "env" in own:
                entry["env"] = env_value
            else:
                new["env"] = env_value
        order = ["backend", "image", "platform", "gpus", "port", "volumes", "env", "docker",
                 "stopTimeout"]
        for name in sorted(new, key=lambda key: order.index(key) if key in order else len(order)):
            put(entry, name, new[name], position(entry, "cmd"))
        if env_changed and env_value is None and "env" in entry:
            if "env" in own:
                delete(entry, "env", actions)
            else:
                entry["env"] = CommentedMap()  # merged from an anchor: override it with none
        if not has_args:
            comment_out(entry, "cmd", actions,
                         "converted by import into the keys above (the image runs its own "
                         "command)")
        if plan.notes:
            note_before(entry, plan.notes, actions)

    def _env_value(self, entry: CommentedMap, plan: Plan) -> Any:
        """The model's new ``env``: None to delete it (or leave it, when nothing changed)."""
        current = entry.get("env")
        if plan.env_replace:
            return dict(plan.env_set) if plan.env_set else None
        if not plan.env_set and not plan.env_drop:
            return current
        if isinstance(current, list):
            items = CommentedSeq([item for item in current
                                  if str(item).partition("=")[0].strip() not in plan.env_drop
                                  and str(item).partition("=")[0].strip() not in plan.env_set])
            items.extend(f"{k}={v}" for k, v in plan.env_set.items())
            return items or None
        mapping = CommentedMap()
        if isinstance(current, dict):
            for k, v in current.items():
                if str(k) not in plan.env_drop:
                    mapping[k] = v
        for k, v in plan.env_set.items():
            mapping[k] = v
        return mapping or None

    def _leave_out(self, models: CommentedMap, key: Any, plan: Plan,
                   actions: Actions) -> None:
        comment_out(models, key, actions,
                     f"left out by import: needs a person: {plan.reason}", f"to do: {plan.action}")

    def _unknown_keys(self, doc: CommentedMap, plans: dict[str, Plan],
                      actions: Actions) -> None:
        """Keys neither llama-swap nor this project has (llama-swap ignored them): commented
        out, so the output loads."""
        top_known = _known_keys(Config) | LLAMA_SWAP_KEYS["top"]
        for key in list(doc.keys()):
            if isinstance(key, str) and key not in top_known and not is_sentinel(key):
                comment_out(doc, key, actions, "left out by import: not a llama-swap key "
                             "(llama-swap ignored it) nor one of this project's")
                self._file_note(f"{key}: not a llama-swap key (llama-swap ignored it): "
                                "commented out")
        model_known = _known_keys(ModelConfig) | LLAMA_SWAP_KEYS["model"]
        for model_id, plan in plans.items():
            entry = doc["models"].get(self.keys[model_id])
            if plan.status == "person" or not isinstance(entry, CommentedMap):
                continue
            for key in [k for k, _ in entry.non_merged_items()]:
                if isinstance(key, str) and key not in model_known and not is_sentinel(key):
                    comment_out(entry, key, actions, "left out by import: not a llama-swap key "
                                 "(llama-swap ignored it) nor one of this project's")
                    plan.note(f"{key}: not a llama-swap key (llama-swap ignored it): commented out")

    def _fix_references(self, doc: CommentedMap, plans: dict[str, Plan],
                        aliases: Mapping[str, list[str]],
                        actions: Actions) -> None:
        """Group members and preloads that name a model left out: removed, with a comment
        (a group, or a preload, left with none is commented out whole)."""
        gone_names = set()
        answered = set()
        for model_id, plan in plans.items():
            names = {model_id, *aliases.get(model_id, [])}
            if plan.status == "person":
                gone_names |= names
            else:
                answered |= names
        holders: list[tuple[CommentedMap, str]] = [(doc, "groups")]
        router = doc.get("routing", {}).get("router") if isinstance(doc.get("routing"), dict) \
            else None
        if isinstance(router, dict) and isinstance(router.get("settings"), CommentedMap):
            holders.append((router["settings"], "groups"))
        for holder, holder_key in holders:
            groups = holder.get(holder_key)
            if not isinstance(groups, CommentedMap):
                continue
            for group_id in list(groups.keys()):
                group = groups[group_id]
                members = group.get("members") if isinstance(group, dict) else None
                if not isinstance(members, list):
                    continue
                gone = [str(m) for m in members if str(m) in gone_names]
                if not gone:
                    continue
                if len(gone) == len(members):
                    comment_out(groups, group_id, actions,
                                 f"left out by import: every member ({', '.join(gone)}) needs a "
                                 "person")
                    self._file_note(f"group {group_id!r} commented out: all its members were "
                                    "left out")
                    continue
                _take_out(group, "members", gone, actions, "needs a person")
                self._file_note(f"group {group_id!r}: {', '.join(gone)} removed (left out)")
            if groups and all(is_sentinel(k) for k in groups):
                comment_out(holder, holder_key, actions,
                             "left out by import: every group was left out")
        hooks = doc.get("hooks")
        startup = hooks.get("on_startup") if isinstance(hooks, dict) else None
        preload = startup.get("preload") if isinstance(startup, CommentedMap) else None
        if not isinstance(preload, list):
            return
        gone = [str(m) for m in preload if str(m) not in answered]
        if not gone:
            return
        if len(gone) == len(preload):
            comment_out(startup, "preload", actions, "left out by import: no model it names is "
                         "here (left out, or unknown: llama-swap skipped those)")
        else:
            _take_out(startup, "preload", gone, actions, "no such model here")
        self._file_note(f"hooks.on_startup.preload: {', '.join(gone)} removed (left out, or no "
                        "model of that name: llama-swap skipped it)")

    def _file_note(self, text: str) -> None:
        if text not in self.file_notes:
            self.file_notes.append(text)

    def _result(self, text: str, plans: dict[str, Plan], broken: bool) -> ImportResult:
        reports = []
        for model_id in self.model_ids:
            plan = plans[model_id]
            for location, message in self.bad_keys.items():
                if location[:2] == ("models", model_id) and len(location) == 3 and \
                        plan.status != "person":
                    plan.note(f"{location[2]}: commented out: config check says: {message}")
            if plan.status == "person":
                # Notes on a conversion that did not happen would only distract.
                reports.append(ModelReport(model_id, "person", (), plan.reason, plan.action))
            else:
                status: Status = "noted" if plan.notes else "converted"
                reports.append(ModelReport(model_id, status, tuple(plan.notes)))
        notes = list(self.file_notes)
        for location, message in self.bad_keys.items():
            if any(location[:n] in self.bad_keys for n in range(1, len(location))):
                continue  # inside a key commented out whole
            if location[0] != "models":
                notes.append(f"{'.'.join(location)}: commented out: config check says: {message}")
        return ImportResult(text, tuple(reports), tuple(dict.fromkeys(notes)), broken)


def _known_keys(model: Any) -> set[str]:
    keys = {f.alias or name for name, f in model.model_fields.items()}
    keys |= set(getattr(model, "ignored_keys", {}) or {})
    return keys


def _longest_key(field_: str, keys: Iterable[str]) -> str | None:
    """The longest of ``keys`` that a loader field path (``a.b[0].c``) starts with."""
    return max((k for k in keys if field_ == k or field_.startswith((k + ".", k + "["))),
               key=len, default=None)


def _take_out(holder: CommentedMap, key: str, gone: list[str], actions: Actions,
              why: str) -> None:
    """The names in ``gone`` leave the list ``holder[key]``, with a comment above it."""
    names = holder[key]
    for index in reversed(range(len(names))):
        if str(names[index]) in gone:
            del names[index]
    note_at(holder, key, actions, f"import: {', '.join(gone)} left out ({why})")
