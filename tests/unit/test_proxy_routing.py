"""Finding a request's model and rewriting its body: pure logic, no engine."""

from __future__ import annotations

import json

import httpx
import pytest

from llamaswap_docker.config import load_config_text
from llamaswap_docker.errors import RequestError
from llamaswap_docker.proxy import parse_model_request, request_headers, rewrite_body
from llamaswap_docker.errors import ModelNotFound, UnsupportedMediaType
from llamaswap_docker.proxy.routing import multipart_field, replace_multipart_field, split_upstream_target

CONFIG = load_config_text("""
models:
  plain: {image: x}
  renamed: {image: x, useModelName: served-name}
  filtered: {image: x, filters: {stripParams: "temperature, top_p", setParams: {top_k: 5}}}
""")


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x", data=fields,
                            files={k: (f"{k}.bin", v) for k, v in files.items()})
    return request.read(), request.headers["content-type"]


def test_model_comes_from_json_body_form_field_or_query() -> None:
    assert parse_model_request(b'{"model": "a"}', "application/json", None).model_name == "a"
    assert parse_model_request(b'{"model": "a"}', "", None).model_name == "a"  # no type: JSON
    assert parse_model_request(b'{"model": "a"}', "application/vnd.x+json", None).model_name == "a"
    body, content_type = multipart({"model": "b"}, {"file": b"\x00" * 100})
    assert parse_model_request(body, content_type, None, uploads=True).model_name == "b"
    assert parse_model_request(b"", "", "c").model_name == "c"


@pytest.mark.parametrize(("content_type", "uploads"), [
    ("text/plain", False),  # a web page's cross-site "simple request": no preflight
    ("text/plain;charset=UTF-8", True),
    ("application/x-www-form-urlencoded", False),  # what `curl -d` sends without -H
    ("multipart/form-data; boundary=x", False),  # files only where the route takes files
    ("application/xml", False),
])
def test_json_under_another_content_type_is_415(content_type: str, uploads: bool) -> None:
    with pytest.raises(UnsupportedMediaType, match="content-type: application/json"):
        parse_model_request(b'{"model": "a"}', content_type, None, uploads=uploads)


@pytest.mark.parametrize(("body", "message"), [
    (b"{oops", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"messages": []}', "names no model"),
    (b'{"model": "a", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),  # int beyond the parse limit
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # nesting beyond the recursion limit
])
def test_bad_bodies_raise_request_error(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_model_request(body, "application/json", None)


def test_unchanged_body_is_forwarded_as_the_same_bytes() -> None:
    body = b'{"model": "plain",   "messages": []}'
    request = parse_model_request(body, "application/json", None)
    assert rewrite_body(request, CONFIG.models["plain"]) is body


def test_use_model_name_and_filters_rewrite_json() -> None:
    request = parse_model_request(b'{"model": "renamed", "x": 1}', "application/json", None)
    assert json.loads(rewrite_body(request, CONFIG.models["renamed"])) == {"model": "served-name", "x": 1}

    request = parse_model_request(
        b'{"model": "filtered", "temperature": 0.1, "top_p": 0.9, "n": 1}', "application/json", None)
    assert json.loads(rewrite_body(request, CONFIG.models["filtered"])) == {
        "model": "filtered", "n": 1, "top_k": 5}


def test_use_model_name_rewrites_the_multipart_model_field_only() -> None:
    audio = bytes(range(256)) * 10
    body, content_type = multipart({"model": "renamed", "language": "en"}, {"file": audio})
    request = parse_model_request(body, content_type, None, uploads=True)
    rewritten = rewrite_body(request, CONFIG.models["renamed"])
    assert multipart_field(rewritten, content_type, "model") == "served-name"
    assert multipart_field(rewritten, content_type, "language") == "en"
    assert audio in rewritten
    assert replace_multipart_field(body, content_type, "absent", "v") == body


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    # Raw ASGI pairs, as uvicorn hands them over (names lower-cased).
    headers = [(b"host", b"proxy"), (b"connection", b"keep-alive, X-Hop"), (b"x-hop", b"1"),
               (b"keep-alive", b"5"), (b"te", b"trailers"), (b"content-length", b"3"),
               (b"expect", b"100-continue"), (b"authorization", b"Bearer k"), (b"x-kept", b"yes")]
    forwarded = dict(request_headers(headers, drop=(b"authorization",)))
    assert forwarded == {b"x-kept": b"yes"}


@pytest.mark.parametrize(("body", "message"), [
    (b'{"model": 7}', '"model" must be a string, not a number'),
    (b'{"model": null}', "names no model"),
    (b'{"model": {"a": 1}}', '"model" must be a string, not an object'),
    (b'"just a string"', "must be a JSON object, not a string"),
    (b'{"model": "a\xff"}', "not valid JSON"),  # invalid UTF-8
])
def test_model_field_of_the_wrong_type_is_a_clear_request_error(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_model_request(body, "application/json", None)


@pytest.mark.parametrize(("raw", "expected"), [
    ("a/v1/models", ("a", "v1/models")),
    ("a/a%2Fb%00", ("a", "a%2Fb%00")),  # the rest stays percent-encoded as written
    ("org/model/health", ("org/model", "health")),  # ids may contain '/'
    ("org%2Fmodel/health", ("org/model", "health")),
    ("org/model", ("org/model", "")),
    ("a", ("a", "")),
])
def test_upstream_target_splits_at_the_longest_model_prefix(raw, expected) -> None:
    from urllib.parse import unquote

    known = {"a", "org/model"}
    resolve = lambda name: name if name in known else None  # noqa: E731
    assert split_upstream_target(resolve, unquote(raw), raw) == expected


def test_upstream_target_naming_no_model_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound, match="no model in /upstream/x/y"):
        split_upstream_target(lambda name: None, "x/y", "x/y")
