"""The OpenAPI document matches the server: exactly the routes the aiohttp
router has, and for every operation real responses (a success and errors)
that validate against the document's schemas for their status and content
type, errors of the documented ``{"error": {"code", "message"}}`` shape; the
bearer security scheme, required when the server has a token, /healthz
exempt. The responses are checked by schemathesis (status code, content
type and response schema conformance) against a real ``conveyor serve``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest
import schemathesis
from integration_support import ServerProcess, StartServer
from schemathesis import checks

from conveyor.broker.broker import Broker
from conveyor.server.http import HttpApi
from conveyor.server.openapi import openapi_document
from conveyor.store.sqlite.store import SqliteStore

TOKEN = "conformance"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFORMANCE = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def served_routes(token: str | None) -> set[tuple[str, str]]:
    """(method, path) of every route the HTTP API registers (built, not started)."""
    api = HttpApi(Broker(SqliteStore(None, durability="memory")), token=token)
    routes = set()
    for route in api.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        if route.method != "HEAD":
            routes.add((route.method.lower(), str(info.get("path") or info.get("formatter"))))
    return routes


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
def test_the_document_lists_exactly_the_served_routes(token: str | None) -> None:
    document = openapi_document(token=token is not None)
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    routes = served_routes(token)
    assert routes == documented, (
        f"served, not documented: {sorted(routes - documented)};"
        f" documented, not served: {sorted(documented - routes)}"
    )
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    # schemathesis reads every operation (a broken $ref or schema would be an error here)
    loaded = list(schemathesis.openapi.from_dict(document).get_all_operations())
    assert len(loaded) == len(ids)
    assert all(result.ok() for result in loaded)


def test_the_document_declares_the_bearer_scheme() -> None:
    for token in (False, True):
        document = openapi_document(token=token)
        scheme = document["components"]["securitySchemes"]["bearer"]
        assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
        assert document["paths"]["/healthz"]["get"]["security"] == []
        assert ("security" in document) is token
    assert openapi_document(token=True)["security"] == [{"bearer": []}]


class Conformance:
    """Calls operations of a served document and checks each real response
    against it; remembers which statuses each operation was checked with."""

    def __init__(self, server: ServerProcess, headers: dict[str, str]) -> None:
        self.base = server.http_url
        self.headers = headers
        self.schema = schemathesis.openapi.from_url(f"{self.base}/openapi.json", headers=headers)
        self.checked: dict[str, set[int]] = defaultdict(set)

    def call(
        self,
        method: str,
        path: str,
        expected: int,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Any:
        operation = self.schema[path][method]
        kwargs: dict[str, Any] = {"path_parameters": params or {}, "query": query or {}}
        if body is not None:
            kwargs |= {"body": body, "media_type": "application/json"}
        case = operation.Case(**kwargs)
        sent = {**(self.headers if auth else {}), **(headers or {})}
        response = case.call(base_url=self.base, headers=sent, timeout=30)
        assert response.status_code == expected, (method, path, response.status_code, response.text)
        case.validate_response(response, checks=CONFORMANCE, headers=sent)
        self.checked[operation.definition.raw["operationId"]].add(response.status_code)
        is_json = response.headers.get("content-type", [""])[0].startswith("application/json")
        return json.loads(response.content) if is_json else response.text


def exercise(api: Conformance) -> None:
    """Every operation once with valid data, and with an error where one can happen."""
    q = {"queue": "conformance"}
    missing = {"queue": "no-such-queue"}
    queue = api.call("PUT", "/v1/queues/{queue}", 200, params=q,
                     body={"settings": {"max_attempts": 2, "max_length": 100}})  # fmt: skip
    assert queue["name"] == "conformance"
    api.call("PUT", "/v1/queues/{queue}", 409, params=q,
             body={"settings": {"max_attempts": 3}, "exist_ok": False})  # fmt: skip
    api.call("GET", "/v1/queues", 200)
    api.call("GET", "/v1/queues/{queue}", 200, params=q)
    api.call("GET", "/v1/queues/{queue}", 404, params=missing)
    api.call("PATCH", "/v1/queues/{queue}", 200, params=q, body={"visibility_timeout": 30})
    api.call("PATCH", "/v1/queues/{queue}", 400, params=q, body={"name": "x"})
    api.call("GET", "/v1/queues/{queue}/stats", 200, params=q)
    api.call("GET", "/v1/queues/{queue}/stats", 404, params=missing)
    messages = {"messages": [{"body": "text"}, {"body_base64": "/wA="}, {"json": {"n": 1}}]}
    api.call("POST", "/v1/queues/{queue}/messages", 200, params=q, body=messages)
    api.call("POST", "/v1/queues/{queue}/messages", 200, params=q,
             body={"body": "grouped", "group": "g", "headers": {"a": "b"}})  # fmt: skip
    api.call("POST", "/v1/queues/{queue}/messages", 400, params=q, body={"body": 1})
    got = api.call("POST", "/v1/queues/{queue}/receive", 200, params=q, body={"max": 4})
    assert {("body" in d, "body_base64" in d) for d in got} == {(True, False), (False, True)}
    api.call("POST", "/v1/queues/{queue}/receive", 400, params=q, body={"max": 0})
    first, second, third, fourth = got
    acked = api.call("POST", "/v1/ack", 200, body={"items": [
        {"id": first["id"], "token": first["token"], "result_json": {"ok": 1}},
        {"id": first["id"], "token": first["token"] + 7},
    ]})  # fmt: skip
    assert [o["ok"] for o in acked] == [True, False]
    api.call("POST", "/v1/ack", 400, body={"items": "nope"})
    extend = {"id": second["id"], "token": second["token"], "seconds": 60}
    api.call("POST", "/v1/extend", 200, body={"items": [extend]})
    api.call("POST", "/v1/extend", 400, body={"items": [{"id": "x", "token": 1, "seconds": 1}]})
    api.call("POST", "/v1/nack", 200, body={"items": [
        {"id": second["id"], "token": second["token"], "delay": 0, "error": "again"}]})  # fmt: skip
    api.call("POST", "/v1/nack", 400, body={"items": [{"id": "x", "token": 1}]})
    api.call("POST", "/v1/dead", 200, body={"items": [
        {"id": third["id"], "token": third["token"], "reason": "poison"}]})  # fmt: skip
    api.call("POST", "/v1/dead", 400, body={"items": [{"id": third["id"], "token": 0}]})
    dead = api.call("GET", "/v1/queues/{queue}/dead-letters", 200, params=q, query={"limit": 10})
    assert [d["id"] for d in dead] == [third["id"]] and dead[0]["dead_reason"] == "poison"
    api.call("GET", "/v1/queues/{queue}/dead-letters", 400, params=q, query={"limit": 0})
    assert api.call("POST", "/v1/queues/{queue}/redrive", 200, params=q,
                    body={"ids": [third["id"]]}) == 1  # fmt: skip
    api.call("POST", "/v1/queues/{queue}/redrive", 404, params=missing, body={})
    result = api.call("GET", "/v1/results/{id}", 200, params={"id": first["id"]})
    assert result["status"] == "ok" and json.loads(result["body"]) == {"ok": 1}
    api.call("GET", "/v1/results/{id}", 408, params={"id": fourth["id"]}, query={"timeout": 0})
    api.call("GET", "/v1/results/{id}", 400, params={"id": "not-an-id"})
    binding = {"pattern": "conformance.#", "queue": "conformance"}
    assert api.call("POST", "/v1/bindings", 200, body=binding) is None
    api.call("POST", "/v1/bindings", 404, body={**binding, "queue": "no-such-queue"})
    assert api.call("GET", "/v1/bindings", 200) == [binding]
    published = api.call("POST", "/v1/topics/{topic}/publish", 200,
                         params={"topic": "conformance.x"}, body={"json": [1, 2]})  # fmt: skip
    assert list(published) == ["conformance"]
    api.call("POST", "/v1/topics/{topic}/publish", 400, params={"topic": "conformance.x"},
             body={"message": {"body": "x"}, "delay": 1})  # fmt: skip
    assert api.call("DELETE", "/v1/bindings", 200, body=binding) is True
    api.call("DELETE", "/v1/bindings", 400, body={"pattern": ""})
    session = api.call("POST", "/v1/sessions", 200, body={"name": "c", "timeout": 30})["id"]
    api.call("POST", "/v1/sessions", 400, body={"capacity": 0})
    named = api.call("POST", "/v1/queues/{queue}/receive", 200, params=q,
                     body={"max": 1}, headers={"X-Conveyor-Session": session})  # fmt: skip
    assert len(named) == 1
    assert any(s["id"] == session for s in api.call("GET", "/v1/sessions", 200))
    api.call("POST", "/v1/sessions/{id}/heartbeat", 200, params={"id": session})
    api.call("POST", "/v1/sessions/{id}/heartbeat", 404, params={"id": "0" * 16})
    api.call("DELETE", "/v1/sessions/{id}", 200, params={"id": session})
    api.call("DELETE", "/v1/sessions/{id}", 200, params={"id": session})  # closed: no error
    api.call("POST", "/v1/queues/{queue}/purge", 200, params=q)
    api.call("POST", "/v1/queues/{queue}/purge", 404, params=missing)
    api.call("GET", "/healthz", 200)
    api.call("GET", "/metrics", 200)
    api.call("GET", "/openapi.json", 200)
    api.call("DELETE", "/v1/queues/{queue}", 200, params=q)
    api.call("DELETE", "/v1/queues/{queue}", 404, params=q)


def test_every_operation_answers_as_its_document_says(start_server: StartServer) -> None:
    server = start_server()
    api = Conformance(server, {})
    exercise(api)
    operations = {op["operationId"] for ops in openapi_document()["paths"].values()
                  for op in ops.values()}  # fmt: skip
    assert set(api.checked) == operations, operations - set(api.checked)
    without_errors = {"queues", "bindings", "sessions", "healthz", "metrics", "openapi",
                      "close_session"}  # fmt: skip
    for operation, statuses in api.checked.items():
        assert 200 in statuses, operation
        if operation not in without_errors:
            assert any(s >= 400 for s in statuses), (operation, statuses)
    assert "Traceback" not in server.log_text()


def test_with_a_token_every_operation_but_healthz_answers_401_as_documented(
    start_server: StartServer,
) -> None:
    server = start_server("--token", TOKEN)
    api = Conformance(server, AUTH)
    exercise(api)  # with the token: as without one
    for path, methods in api.schema.raw_schema["paths"].items():
        for method in methods:
            params = {p: "x" for p in ("queue", "topic", "id") if "{" + p + "}" in path}
            expected = 200 if path == "/healthz" else 401
            body = {} if method in ("post", "put", "patch") else None
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                api.call(method.upper(), path, expected, params=params, body=body,
                         headers=headers, auth=False)  # fmt: skip
    assert "Traceback" not in server.log_text()
