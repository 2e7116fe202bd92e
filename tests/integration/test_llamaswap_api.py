"""What tools written for llama-swap read, on the real engine: model ids with spaces,
``capabilities`` in /v1/models, and /api/metrics/activity in llama-swap's envelope and
parameters (and the earlier one the UI reads)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import chat, fake_model, model_containers


def test_a_model_id_with_spaces_is_served_listed_and_unloaded(start_proxy, docker_client,
                                                             instance_name) -> None:
    model_id = "GPT-OSS 20B Vulkan"
    proxy = start_proxy({model_id: fake_model()})
    assert chat(proxy.url, model_id).status_code == 200
    assert [m["id"] for m in httpx.get(f"{proxy.url}/v1/models").json()["data"]] == [model_id]
    (container,) = model_containers(docker_client, instance_name, model_id, all=False)
    assert container.labels["io.llamaswap.model"] == model_id
    unloaded = httpx.post(f"{proxy.url}/api/models/unload/{quote(model_id)}", timeout=30)
    assert unloaded.status_code == 200 and unloaded.json()["unloaded"] == model_id
    assert model_containers(docker_client, instance_name, model_id) == []


def test_capabilities_are_rendered_in_v1_models_as_llama_swap_renders_them(start_proxy) -> None:
    proxy = start_proxy({
        "vision": fake_model(
            capabilities={"in": ["text", "image"], "out": ["text"], "tools": True,
                          "context": 32000},
            # The rendered fields win over metadata of the same names (as in llama-swap).
            metadata={"family": "qwen", "context_length": 1, "architecture": "x"}),
        "plain": fake_model(metadata={"architecture": "kept without capabilities"}),
    })
    models = {m["id"]: m for m in httpx.get(f"{proxy.url}/v1/models").json()["data"]}
    vision = models["vision"]
    assert vision["architecture"] == {"input_modalities": ["text", "image"],
                                      "output_modalities": ["text"],
                                      "modality": "text+image->text"}
    assert vision["capabilities"] == {"vision": True, "function_calling": True}
    assert vision["supported_parameters"] == ["tools", "tool_choice"]
    assert vision["context_length"] == 32000
    assert vision["meta"] == {"family": "qwen", "n_ctx": 32000}
    # Added beside the fields clients already read.
    assert {"id", "object", "created", "owned_by", "state"} <= set(vision)
    plain = models["plain"]
    assert "capabilities" not in plain and "architecture" not in plain
    assert plain["meta"] == {"architecture": "kept without capabilities"}


@pytest.fixture(params=["memory", "sqlite"])
def proxy_with_activity(request, start_proxy, tmp_path):
    """A proxy that served a, b, a, b, a (ids 1..5), its rows in memory or in a SQLite store."""
    store = {"store": {"path": str(tmp_path / "activity.db")}} if request.param == "sqlite" else {}
    proxy = start_proxy({"a": fake_model(aliases=["alias-a"]), "b": fake_model()},
                        groups={"both": {"swap": False, "exclusive": False,
                                         "members": ["a", "b"]}}, **store)
    for model in "ababa":
        assert chat(proxy.url, model).status_code == 200
    return proxy


def page(url: str, **params) -> dict:
    response = httpx.get(f"{url}/api/metrics/activity", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_activity_answers_in_llama_swaps_envelope(proxy_with_activity) -> None:
    url = proxy_with_activity.url
    first = page(url, limit=2)
    assert (first["page"], first["limit"], first["total"], first["total_pages"]) == (1, 2, 5, 3)
    assert [row["id"] for row in first["data"]] == [5, 4]  # newest first
    assert "activity" not in first and first["offset"] == 0  # the rows once, under llama-swap's name
    third = page(url, limit=2, page=3)
    assert [row["id"] for row in third["data"]] == [1] and third["page"] == 3
    assert page(url, limit=2, offset=2)["page"] == 2  # offset still works, and names its page
    assert page(url, limit=200)["data"][0]["id"] == 5  # what the UI asks for


def test_activity_takes_llama_swaps_filters_and_order(proxy_with_activity) -> None:
    url = proxy_with_activity.url
    ids = lambda **params: [row["id"] for row in page(url, **params)["data"]]  # noqa: E731
    assert ids(model="b") == [4, 2]
    assert ids(model=["a", "b"]) == [5, 4, 3, 2, 1]  # repeatable
    assert ids(model="alias-a") == [5, 3, 1]  # an alias names its model
    assert ids(min_id=2, max_id=4) == [4, 3, 2]
    assert ids(order="asc") == [1, 2, 3, 4, 5]
    assert ids(sort="model", order="asc") == [1, 3, 5, 2, 4]  # ties in id order, as asked
    assert ids(sort="model") == [4, 2, 5, 3, 1]
    now = datetime.now(timezone.utc)
    hour = timedelta(hours=1)
    assert ids(start=(now - hour).isoformat(), end=(now + hour).isoformat()) == [5, 4, 3, 2, 1]
    assert ids(start=(now + hour).strftime("%Y-%m-%dT%H:%M:%SZ")) == []
    assert page(url, start=(now + hour).isoformat())["total_pages"] == 0


BAD_PARAMETERS = [
    ({"start": "yesterday"}, "use RFC 3339"),
    ({"start": "2025-01-02"}, "use RFC 3339"),  # a date alone is not RFC 3339
    ({"start": "2025-01-02T00:00:00Z", "end": "2025-01-01T00:00:00Z"}, "start must be before end"),
    ({"min_id": 5, "max_id": 2}, "min_id must be <= max_id"),
    ({"min_id": 0}, "min_id"),
    ({"sort": "secret"}, "invalid sort column"),
    ({"order": "sideways"}, "order must be asc or desc"),
    ({"page": 0}, "page"),
    ({"page": 2, "offset": 10}, "page or offset"),
]


def test_bad_activity_parameters_are_400_in_openai_shape(start_proxy) -> None:
    proxy = start_proxy({"a": fake_model()})
    for params, message in BAD_PARAMETERS:
        response = httpx.get(f"{proxy.url}/api/metrics/activity", params=params, timeout=10)
        assert response.status_code == 400, params
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and message in error["message"], params
