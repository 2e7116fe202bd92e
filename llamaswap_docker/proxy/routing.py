"""From an HTTP request to the model it names, and the body to forward.

The model comes from the JSON body's ``model``, a multipart form field ``model`` (audio and
image uploads), or ``?model=``. The body is read once and forwarded as the same bytes unless
the model's config must change it (``useModelName``, ``filters``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from llamaswap_docker.config import ModelConfig
from llamaswap_docker.errors import ModelNotFound, RequestError, UnsupportedMediaType

__all__ = [
    "ModelRequest",
    "multipart_field",
    "parse_model_request",
    "replace_multipart_field",
    "rewrite_body",
    "split_upstream_target",
]


@dataclass
class ModelRequest:
    """A request's model name and body, as the client sent them."""

    model_name: str
    body: bytes
    #: The parsed JSON body, when it was JSON (None for multipart and others).
    payload: dict[str, Any] | None
    content_type: str = ""


def _multipart_delimiter(content_type: str) -> bytes | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary" and value.strip('"'):
            return b"--" + value.strip('"').encode()
    return None


def _is_text_field(head: bytes, name: str) -> bool:
    return f'name="{name}"'.encode() in head and b"filename=" not in head


def multipart_field(body: bytes, content_type: str, name: str) -> str | None:
    """The value of a small text field in a multipart/form-data body, or None."""
    delimiter = _multipart_delimiter(content_type)
    if delimiter is None:
        return None
    # Parts follow a delimiter: text before the first one (or a body without any) is no part.
    for section in body.split(delimiter)[1:]:
        head, sep, value = section.partition(b"\r\n\r\n")
        if sep and _is_text_field(head, name):
            return value.removesuffix(b"\r\n").decode("utf-8", "replace").strip()
    return None


def replace_multipart_field(body: bytes, content_type: str, name: str, value: str) -> bytes:
    """``body`` with text field ``name`` set to ``value`` (unchanged when there is none)."""
    delimiter = _multipart_delimiter(content_type)
    if delimiter is None:
        return body
    sections = body.split(delimiter)
    for index, section in enumerate(sections):
        head, sep, _ = section.partition(b"\r\n\r\n")
        if sep and _is_text_field(head, name):
            sections[index] = head + sep + value.encode() + b"\r\n"
            return delimiter.join(sections)
    return body


def _is_json(media_type: str) -> bool:
    return media_type in ("application/json", "") or media_type.endswith("+json")


def parse_model_request(body: bytes, content_type: str, query_model: str | None,
                        uploads: bool = False) -> ModelRequest:
    """Find the model a request names.

    A body is read as JSON only with a JSON content type (or none): ``text/plain`` and form
    encodings are what a web page can send cross-site without a CORS preflight, so they are
    refused. ``uploads``: the route takes files (``multipart/form-data``, model in a field).

    Raises:
        RequestError: malformed JSON, or no model named anywhere.
        UnsupportedMediaType: any other content type.
    """
    media_type = content_type.split(";")[0].strip().lower()
    payload: dict[str, Any] | None = None
    model: Any = None
    if uploads and media_type == "multipart/form-data":
        model = multipart_field(body, content_type, "model")
    elif not _is_json(media_type):
        expected = "application/json or multipart/form-data" if uploads else "application/json"
        raise UnsupportedMediaType(
            f"Content-Type {media_type!r} is not accepted here: send {expected} "
            "(curl: -H 'content-type: application/json')")
    elif body:
        parsed = _loads(body)
        if not isinstance(parsed, dict):
            raise RequestError(
                f"request body must be a JSON object, not {_json_kind(parsed)}")
        payload = parsed
        model = parsed.get("model")
        if model is not None and not isinstance(model, str):
            raise RequestError(f'"model" must be a string, not {_json_kind(model)}')
    if model is None or model == "":
        model = query_model
    if not isinstance(model, str) or not model:
        raise RequestError(
            "the request names no model: set \"model\" in the JSON body "
            "(or the 'model' form field, or ?model=); GET /v1/models lists them"
        )
    return ModelRequest(model, body, payload, content_type)


def rewrite_body(request: ModelRequest, model: ModelConfig) -> bytes:
    """The body to forward: the original bytes unless ``useModelName`` or filters change it."""
    payload = request.payload
    if payload is None:
        if model.use_model_name and request.content_type.lower().startswith("multipart/form-data"):
            return replace_multipart_field(request.body, request.content_type, "model",
                                           model.use_model_name)
        return request.body
    changes: dict[str, Any] = {}
    if model.use_model_name and payload.get("model") != model.use_model_name:
        changes["model"] = model.use_model_name
    strip = [name for name in model.filters.stripped_params if name in payload]
    set_params = {
        key: value for key, value in model.filters.effective_set_params.items()
        if payload.get(key, object()) != value
    }
    if not changes and not strip and not set_params:
        return request.body
    rewritten = {key: value for key, value in payload.items() if key not in strip}
    rewritten.update(set_params)
    rewritten.update(changes)
    try:
        return orjson.dumps(rewritten)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits, NaN: stdlib json
        return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()


def _loads(body: bytes) -> Any:
    """Parse a JSON body; orjson first (twice as fast as json on a 4 MB image request, and this
    runs on the event loop), the standard library for what orjson refuses but JSON allows
    (integers beyond 64 bits)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, depth
        raise RequestError(f"request body is not valid JSON: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def split_upstream_target(
    resolve: Callable[[str], str | None], target: str, raw_target: str | None = None
) -> tuple[str, str]:
    """``/upstream/<model>/<path>``: the longest prefix of the target naming a model (ids may
    contain '/'), and the rest of the path.

    ``raw_target`` is the same target still percent-encoded, as the client wrote it: the rest is
    cut from it, so ``%2F``, ``%3F`` or ``%00`` reach the model server unchanged.

    Raises:
        ModelNotFound: no prefix names a model.
    """
    parts = (raw_target if raw_target is not None else target).split("/")
    for cut in range(len(parts), 0, -1):
        prefix = "/".join(parts[:cut])
        model_id = resolve(unquote(prefix) if raw_target is not None else prefix)
        if model_id is not None:
            return model_id, "/".join(parts[cut:])
    raise ModelNotFound(
        f"no model in /upstream/{target}; GET /v1/models lists the models you can use"
    )