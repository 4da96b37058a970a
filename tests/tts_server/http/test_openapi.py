"""GET /openapi.json against the real server: it documents every route, its enums are the
ones the handlers accept, and every documented example and error case gets the documented
status and body shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import jsonschema_rs
import pytest

from tests.support import ServerProcess, started_server
from tts_server.app import create_app
from tts_server.config import Settings
from tts_server.encoding.formats import OPENAI_FORMATS
from tts_server.speech.request import AUDIO_FORMATS

OVERRIDES: dict[str, dict[str, Any]] = {
    "text": {"max_text_chars": 300}, "jobs": {"max_text_chars": 600},
    "limits": {"tiers": {"anonymous": {"requests_per_s": 1000.0, "burst": 1000}}},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = started_server(tmp_path_factory.mktemp("openapi"), OVERRIDES)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def document(server: ServerProcess) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(server.url + "/openapi.json", timeout=10) as response:
        return json.load(response)


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, op in item.items():
            yield path, method.upper(), op


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    return jsonschema_rs.validator_for({**schema, "components": document["components"]})


def test_every_route_is_documented_and_nothing_else(document):
    app = create_app(Settings())
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    documented = {(method, path) for path, method, _ in operations(document)}
    assert documented == routes
    assert document["openapi"].startswith("3.1")


def test_enums_and_limits_are_the_validators_own(document):
    schemas = document["components"]["schemas"]
    assert schemas["TTSRequest"]["properties"]["format"]["enum"] == list(AUDIO_FORMATS)
    assert schemas["SpeechRequest"]["properties"]["response_format"]["enum"] == list(
        OPENAI_FORMATS)
    assert schemas["TTSRequest"]["properties"]["text"]["maxLength"] == 300  # from settings
    assert schemas["JobRequest"]["properties"]["text"]["maxLength"] == 600


def body_schema(op: dict[str, Any]) -> dict[str, Any] | None:
    content = op.get("requestBody", {}).get("content", {})
    return content.get("application/json")


def call_kwargs(case: dict[str, Any]) -> dict[str, Any]:
    """A documented error case as aiohttp request arguments (see tts_server/http/openapi.py)."""
    repeat = case.get("repeat", 1)
    if "raw" in case:
        return {"data": (case["raw"] * repeat).encode(),
                "headers": {"Content-Type": case.get("content_type", "application/json")}}
    if "body" in case:
        body = dict(case["body"])
        if repeat > 1:
            body["text"] = body["text"] * repeat
        return {"json": body}
    return {"params": case.get("query", {})}


def fill_path(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


async def check_response(document: dict[str, Any], op: dict[str, Any],
                         response: aiohttp.ClientResponse) -> None:
    declared = op["responses"].get(str(response.status))
    assert declared is not None, f"undocumented status {response.status}"
    content = declared.get("content", {})
    media = response.content_type
    assert media in content or "*/*" in content, (media, list(content))
    raw = await response.read()
    if media == "application/json":
        validator(document, content[media]["schema"]).validate(json.loads(raw))


async def test_every_documented_example_succeeds_with_its_documented_shape(server, document):
    sent = 0
    async with aiohttp.ClientSession() as session:
        for path, method, op in operations(document):
            media = body_schema(op)
            for name, example in (media or {}).get("examples", {}).items():
                async with session.request(method, server.url + path,
                                           json=example["value"]) as response:
                    assert response.status < 300, (path, name, await response.text())
                    await check_response(document, op, response)
                    sent += 1
            plain_get = media is None and "{" not in path and method == "GET"
            if plain_get and "200" in op["responses"]:  # not the WebSocket upgrade (101)
                async with session.get(server.url + path) as response:
                    assert response.status == 200, path
                    await check_response(document, op, response)
                    sent += 1
    assert sent >= 15


async def test_every_documented_error_case_gets_its_status_and_code(server, document):
    cases = [(path, method, op, case) for path, method, op in operations(document)
             for case in op.get("x-error-cases", [])]
    assert len(cases) >= 15
    async with aiohttp.ClientSession() as session:
        for path, method, op, case in cases:
            url = server.url + fill_path(path, case.get("path", {}))
            async with session.request(method, url, **call_kwargs(case)) as response:
                assert response.status == case["status"], (path, case, await response.text())
                await check_response(document, op, response)
                assert (await response.json())["error"]["code"] == case["code"]


@pytest.mark.parametrize("audio_format", AUDIO_FORMATS)
async def test_each_documented_format_is_served_as_its_documented_type(server, document,
                                                                       audio_format):
    op = document["paths"]["/api/tts"]["post"]
    async with aiohttp.ClientSession() as session:
        body = {"text": "Each format.", "format": audio_format}
        async with session.post(f"{server.url}/api/tts", json=body) as response:
            assert response.status == 200
            await check_response(document, op, response)
