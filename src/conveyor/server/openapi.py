"""The OpenAPI 3.1 description of the HTTP API, built from the operation
table's argument structs and the core result types, so it cannot drift from
what the server accepts."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from conveyor import __version__
from conveyor.broker import operations
from conveyor.core.types import (
    Binding,
    Delivery,
    EnqueueResult,
    Message,
    QueueConfig,
    QueueStats,
    Result,
    SessionInfo,
)

Q = "/v1/queues/{queue}"

# (method, path, operation, request body?, response type)
ROUTES: list[tuple[str, str, str, bool, Any]] = [
    ("get", "/v1/queues", "queues", False, list[QueueConfig]),
    ("put", Q, "create_queue", True, QueueConfig),
    ("get", Q, "get_queue", False, QueueConfig),
    ("patch", Q, "configure_queue", True, QueueConfig),
    ("delete", Q, "delete_queue", False, None),
    ("post", Q + "/purge", "purge", False, int),
    ("get", Q + "/stats", "stats", False, QueueStats),
    ("post", Q + "/messages", "enqueue", True, list[EnqueueResult]),
    ("post", Q + "/receive", "receive", True, list[Delivery]),
    ("get", Q + "/dead-letters", "dead_letters", False, list[Message]),
    ("post", Q + "/redrive", "redrive", True, int),
    ("post", "/v1/ack", "ack", True, list[operations.Outcome]),
    ("post", "/v1/nack", "nack", True, list[operations.Outcome]),
    ("post", "/v1/extend", "extend", True, list[operations.Outcome]),
    ("post", "/v1/dead", "dead", True, list[operations.Outcome]),
    ("post", "/v1/topics/{topic}/publish", "publish", True, dict[str, EnqueueResult]),
    ("get", "/v1/bindings", "bindings", False, list[Binding]),
    ("post", "/v1/bindings", "bind", True, None),
    ("delete", "/v1/bindings", "unbind", True, bool),
    ("get", "/v1/results/{id}", "result", False, Result),
    ("get", "/v1/sessions", "sessions", False, list[SessionInfo]),
]

_MESSAGE_JSON = {
    "type": "object",
    "description": "A message: exactly one of body (UTF-8 text), body_base64, or json"
    " (any JSON value), plus the NewMessage options.",
    "properties": {
        "body": {"type": "string"},
        "body_base64": {"type": "string", "contentEncoding": "base64"},
        "json": {},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        "delay": {"type": "number", "minimum": 0},
        "ttl": {"type": "number", "exclusiveMinimum": 0},
        "dedup_key": {"type": "string"},
        "group": {"type": "string"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "max_attempts": {"type": "integer", "minimum": 1},
        "idempotency_key": {"type": "string"},
    },
}


def _without(schema: dict[str, Any], field: str) -> dict[str, Any]:
    out = dict(schema)
    out["properties"] = {k: v for k, v in schema["properties"].items() if k != field}
    out["required"] = [r for r in schema.get("required", []) if r != field]
    if not out["required"]:
        del out["required"]
    return out


def _json_body(schema: dict[str, Any]) -> None:
    """``body`` (bytes) becomes ``body`` (UTF-8 text) or ``body_base64``."""
    props = schema["properties"]
    props.pop("body", None)
    props["body"] = {"type": "string", "description": "the body, when it is UTF-8 text"}
    props["body_base64"] = {
        "type": "string",
        "contentEncoding": "base64",
        "description": "the body, when it is not UTF-8 text",
    }
    schema["required"] = [r for r in schema.get("required", []) if r != "body"]


@functools.cache
def openapi_document() -> dict[str, Any]:
    result_types = [t for *_, t in ROUTES if t is not None]
    arg_types = [op.args for op in operations.OPERATIONS.values()]
    schemas, components = msgspec.json.schema_components(
        [*result_types, *arg_types], ref_template="#/components/schemas/{name}"
    )
    by_type = dict(zip([*result_types, *arg_types], schemas, strict=True))
    components["MessageJson"] = _MESSAGE_JSON
    # JSON has no bytes: bodies travel as text, or as base64 (see http.py).
    for kind in ("Delivery", "Message", "Result"):
        _json_body(components[kind])
    ack = components["Ack"]["properties"]
    ack["result"] = {"type": "string", "description": "the result as UTF-8 text"}
    ack["result_base64"] = {"type": "string", "contentEncoding": "base64"}
    ack["result_json"] = {"description": "the result as any JSON value"}
    error = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    components["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    paths: dict[str, Any] = {}
    for method, path, name, has_body, result in ROUTES:
        op = operations.OPERATIONS[name]
        entry: dict[str, Any] = {
            "operationId": name,
            "summary": op.summary,
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in ("queue", "topic", "id")
                if "{" + p + "}" in path
            ],
            "responses": {
                "200": {
                    "description": "ok",
                    "content": {"application/json": {"schema": by_type[result] if result else {}}},
                },
                "default": error,
            },
        }
        if has_body:
            schema = by_type[op.args]
            if name in ("enqueue", "publish"):
                schema = {"$ref": "#/components/schemas/MessageJson"}
            elif name == "configure_queue":  # the body is the settings themselves
                schema = {"type": "object", "description": "queue settings to change"}
            elif "{queue}" in path:  # the queue is named by the path, not the body
                schema = _without(components[op.args.__name__], "queue")
            entry["requestBody"] = {"content": {"application/json": {"schema": schema}}}
        paths.setdefault(path, {})[method] = entry
    session_id = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    ok = {"200": {"description": "ok"}, "default": error}
    paths["/v1/sessions"]["post"] = {
        "operationId": "open_session",
        "summary": "Open a consumer session (name it in X-Conveyor-Session on receives).",
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "capacity": {"type": "integer", "minimum": 1},
                            "timeout": {"type": "number", "exclusiveMinimum": 0},
                        },
                        "additionalProperties": False,
                    }
                }
            }
        },
        "responses": ok,
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
    paths["/healthz"] = {
        "get": {"operationId": "healthz", "responses": {"200": {"description": "ok"}}}
    }
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "responses": {"200": {"description": "this OpenAPI document"}},
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "responses": {"200": {"description": "Prometheus text format"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Conveyor HTTP API", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }
