"""The OpenAPI 3.1 description of the HTTP API, built from the operation
table's argument structs, the core result types and the validation rules,
so it cannot drift from what the server accepts and answers.

tests/integration/test_openapi_conformance.py holds the server to it: the
routes are exactly the router's, and every response of a fuzzed run
validates against the schema of its operation and status.

Authentication: the bearer scheme is always described; the global security
requirement is stated when the server has a token (``--token``), and
/healthz never requires it.
"""

from __future__ import annotations

import functools
import typing
from typing import Any

import msgspec

from conveyor.broker import operations
from conveyor.core import validation
from conveyor.core.types import (
    Binding,
    Delivery,
    EnqueueResult,
    Message,
    MessageOptions,
    QueueConfig,
    QueueStats,
    Result,
    SessionInfo,
)
from conveyor.core.version import VERSION

Q = "/v1/queues/{queue}"
REF = "#/components/schemas/{name}"

# (method, path, operation, request body component or None, response type)
ROUTES: list[tuple[str, str, str, str | None, Any]] = [
    ("get", "/v1/queues", "queues", None, list[QueueConfig]),
    ("put", Q, "create_queue", "CreateQueueBody", QueueConfig),
    ("get", Q, "get_queue", None, QueueConfig),
    ("patch", Q, "configure_queue", "QueueSettings", QueueConfig),
    ("delete", Q, "delete_queue", None, None),
    ("post", Q + "/purge", "purge", None, int),
    ("get", Q + "/stats", "stats", None, QueueStats),
    ("post", Q + "/messages", "enqueue", "EnqueueBody", list[EnqueueResult]),
    ("post", Q + "/receive", "receive", "ReceiveBody", list[Delivery]),
    ("get", Q + "/dead-letters", "dead_letters", None, list[Message]),
    ("post", Q + "/redrive", "redrive", "RedriveBody", int),
    ("post", "/v1/ack", "ack", "AckArgs", list[operations.Outcome]),
    ("post", "/v1/nack", "nack", "NackArgs", list[operations.Outcome]),
    ("post", "/v1/extend", "extend", "ExtendArgs", list[operations.Outcome]),
    ("post", "/v1/dead", "dead", "DeadArgs", list[operations.Outcome]),
    ("post", "/v1/topics/{topic}/publish", "publish", "PublishBody", dict[str, EnqueueResult]),
    ("get", "/v1/bindings", "bindings", None, list[Binding]),
    ("post", "/v1/bindings", "bind", "BindArgs", None),
    ("delete", "/v1/bindings", "unbind", "BindArgs", bool),
    ("get", "/v1/results/{id}", "result", None, Result),
    ("get", "/v1/sessions", "sessions", None, list[SessionInfo]),
]

_OPTIONAL_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_QUERY: dict[str, list[dict[str, Any]]] = {
    "dead_letters": [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {"name": "after", "in": "query", "schema": {"type": "string"}},
    ],
    "result": [
        {
            "name": "timeout",
            "in": "query",
            "description": "seconds to wait for the result",
            "schema": {"type": "number", "minimum": 0},
        }
    ],
    "receive": [
        {
            "name": "X-Conveyor-Session",
            "in": "header",
            "description": "a session of POST /v1/sessions; without it, the server's own",
            "schema": {"type": "string", "pattern": "^[!-~]{1,64}$"},
        }
    ],
}


def _setting_schema(rule: validation.SettingRule) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer" if rule.integer else "number"}
    schema["exclusiveMinimum" if rule.exclusive_minimum else "minimum"] = rule.minimum
    if rule.maximum is not None:
        schema["maximum"] = rule.maximum
    return {"anyOf": [schema, {"type": "null"}]} if rule.nullable else schema


def _message_schemas() -> dict[str, Any]:
    """A message as JSON: exactly one of body (UTF-8 text), body_base64 or
    json (any JSON value, stored as its text), plus the NewMessage options."""
    key = {"type": "string", "minLength": 1, "maxLength": validation.MAX_KEY_LENGTH}
    options = {
        "priority": {"type": "integer", "minimum": 0, "maximum": validation.MAX_PRIORITY},
        "delay": {"type": "number", "minimum": 0},
        "ttl": {"type": "number", "exclusiveMinimum": 0},
        "dedup_key": key,
        "group": key,
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
    }
    # null is "not given", as the NewMessage fields that may be None take it.
    hints = typing.get_type_hints(MessageOptions)
    options = {
        name: {"anyOf": [schema, {"type": "null"}]}
        if type(None) in typing.get_args(hints[name])
        else schema
        for name, schema in options.items()
    }
    bodies = {
        "body": {"type": "string"},
        "body_base64": {"type": "string", "contentEncoding": "base64"},
        "json": {"description": "any JSON value"},
    }
    message: dict[str, Any] = {
        "type": "object",
        "description": "A message: exactly one of body, body_base64 or json.",
        "properties": {**bodies, **options},
        "additionalProperties": False,
        "oneOf": [{"required": [b]} for b in bodies],
    }
    one = {
        **message,
        "properties": {**bodies, **options, "idempotency_key": {"type": "string"}},
    }
    batch = {
        "type": "object",
        "properties": {
            "messages": {"type": "array", "items": {"$ref": REF.format(name="MessageJson")}},
            "idempotency_key": {"type": "string"},
        },
        "required": ["messages"],
        "additionalProperties": False,
    }
    nested = {
        "type": "object",
        "properties": {
            "message": {"$ref": REF.format(name="MessageJson")},
            "idempotency_key": {"type": "string"},
        },
        "required": ["message"],
        "additionalProperties": False,
    }
    return {
        "MessageJson": message,
        "EnqueueBody": {"anyOf": [one, batch]},
        "PublishBody": {"anyOf": [one, nested]},
    }


def _request_schemas(components: dict[str, Any]) -> None:
    """The bodies as the HTTP API takes them (see http.py)."""
    settings = {
        "type": "object",
        "description": "Queue settings; those not given keep their value (or default).",
        "properties": {n: _setting_schema(r) for n, r in validation.SETTING_RULES.items()},
        "additionalProperties": False,
    }
    components["QueueSettings"] = settings
    components["CreateQueueBody"] = {
        "type": "object",
        "properties": {
            "settings": {"$ref": REF.format(name="QueueSettings")},
            "exist_ok": {"type": "boolean", "default": True},
        },
        "additionalProperties": False,
    }
    components.update(_message_schemas())
    components["ReceiveBody"] = {
        "type": "object",
        "properties": {
            "max": {"type": "integer", "minimum": 1, "default": 1},
            "wait": {"type": "number", "minimum": 0, "default": 0},
            "visibility": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]},
        },
        "additionalProperties": False,
    }
    components["RedriveBody"] = {
        "type": "object",
        "properties": {
            "ids": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]}
        },
        "additionalProperties": False,
    }
    for item in ("Ack", "Nack", "Extend", "Dead"):
        components[item]["properties"]["token"] = {"type": "integer", "minimum": 1}
    ack = components["Ack"]["properties"]
    ack["result"] = {**_OPTIONAL_STRING, "description": "the result as UTF-8 text"}
    ack["result_base64"] = {"type": "string", "contentEncoding": "base64"}
    ack["result_json"] = {"description": "the result as any JSON value"}


def _json_body(schema: dict[str, Any]) -> None:
    """``body`` (bytes) becomes ``body`` (UTF-8 text) or ``body_base64``."""
    props = schema["properties"]
    props["body"] = {"type": "string", "description": "the body, when it is UTF-8 text"}
    props["body_base64"] = {
        "type": "string",
        "contentEncoding": "base64",
        "description": "the body, when it is not UTF-8 text",
    }
    schema["required"] = [r for r in schema.get("required", []) if r != "body"]


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "stable: see docs/protocol.md for every code",
                    },
                    "message": {"type": "string"},
                },
                "required": ["code", "message"],
                "additionalProperties": False,
            }
        },
        "required": ["error"],
        "additionalProperties": False,
    }


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(schema: dict[str, Any]) -> dict[str, Any]:
    return {"200": _json(schema), "default": _json({"$ref": REF.format(name="Error")}, "error")}


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in ("queue", "topic", "id")
        if "{" + p + "}" in path
    ]


def _operation_paths(by_type: dict[Any, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, name, body, result in ROUTES:
        entry: dict[str, Any] = {
            "operationId": name,
            "summary": operations.OPERATIONS[name].summary,
            "parameters": _path_parameters(path) + _QUERY.get(name, []),
            "responses": _responses(by_type[result] if result else {"type": "null"}),
        }
        if body is not None:
            schema = {"$ref": REF.format(name=body)}
            entry["requestBody"] = {"content": {"application/json": {"schema": schema}}}
        paths.setdefault(path, {})[method] = entry
    return paths


def _session_paths(paths: dict[str, Any]) -> None:
    session_id = _path_parameters("{id}")
    ok = _responses(
        {
            "type": "object",
            "properties": {"ok": {"const": True}},
            "required": ["ok"],
            "additionalProperties": False,
        }
    )
    session = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 200},
            "capacity": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
            "timeout": {"type": "number", "exclusiveMinimum": 0},
        },
        "additionalProperties": False,
    }
    opened = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
    paths["/v1/sessions"]["post"] = {
        "operationId": "open_session",
        "summary": "Open a consumer session (name it in X-Conveyor-Session on receives).",
        "requestBody": {"content": {"application/json": {"schema": session}}},
        "responses": _responses(opened),
    }
    paths["/v1/sessions/{id}/heartbeat"] = {
        "post": {
            "operationId": "heartbeat_session",
            "summary": "Keep a session alive.",
            "parameters": session_id,
            "responses": ok,
        }
    }
    paths["/v1/sessions/{id}"] = {
        "delete": {
            "operationId": "close_session",
            "summary": "Close a session: its leases are released.",
            "parameters": session_id,
            "responses": ok,
        }
    }


def _service_paths(paths: dict[str, Any]) -> None:
    status = {
        "type": "object",
        "properties": {"status": {"const": "ok"}},
        "required": ["status"],
    }
    health = _responses(status)
    health["200"]["description"] = "the store answers"
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "summary": "Whether the broker and its store answer (never needs the token).",
            "security": [],
            "responses": health,
        }
    }
    document = _responses({"type": "object"})
    document["200"]["description"] = "this OpenAPI document"
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "responses": document}}
    metrics = _responses({})
    metrics["200"] = {
        "description": "Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    paths["/metrics"] = {"get": {"operationId": "metrics", "responses": metrics}}


@functools.cache
def openapi_document(*, token: bool = False) -> dict[str, Any]:
    """The document; ``token``: the server requires a bearer token."""
    result_types = [t for *_, t in ROUTES if t is not None]
    arg_types = [
        operations.AckArgs,
        operations.NackArgs,
        operations.ExtendArgs,
        operations.DeadArgs,
        operations.BindArgs,
    ]
    schemas, components = msgspec.json.schema_components(
        [*result_types, *arg_types], ref_template=REF
    )
    by_type = dict(zip([*result_types, *arg_types], schemas, strict=True))
    # JSON has no bytes: bodies travel as text, or as base64 (see http.py).
    for kind in ("Delivery", "Message", "Result"):
        _json_body(components[kind])
    _request_schemas(components)
    components["Error"] = _error_schema()
    paths = _operation_paths(by_type)
    _session_paths(paths)
    _service_paths(paths)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Conveyor HTTP API", "version": VERSION},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the server's --token, as Authorization: Bearer <token>",
                }
            },
        },
    }
    if token:
        document["security"] = [{"bearer": []}]
    return document
