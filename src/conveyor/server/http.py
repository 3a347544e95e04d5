"""The HTTP API: JSON over HTTP/1.1 for every broker operation, with an
OpenAPI description at /openapi.json, /healthz and /metrics (Prometheus).

Every route maps onto one entry of conveyor.broker.operations, the same
table the native protocol uses. JSON has no bytes, so message bodies travel
as ``body`` (UTF-8 text), ``body_base64``, or ``json`` (any JSON value, stored
as its JSON text with header content-type: application/json); deliveries,
dead letters and results come back with ``body`` when it is UTF-8 text and
``body_base64`` otherwise.

Consumers: a receive may name its session in the ``X-Conveyor-Session``
header (``POST /v1/sessions`` opens one; heartbeat it, or it expires and its
leases are released). Without one, receives share the server's own session,
whose leases end only by ack or by their visibility timeout, as in SQS.

Errors are JSON, ``{"error": {"code": ..., "message": ...}}``, with the
stable codes of conveyor.core.errors and each error's ``http_status`` (plus
``not_found`` 404 and ``method_not_allowed`` 405 for a wrong path or method).
Unknown fields in a body are refused, not ignored; a body nested deeper than
wire.MAX_DEPTH or with an integer past 64 bits gets invalid_argument before
anything walks it. The user's guide is docs/http.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from conveyor.broker import operations
from conveyor.broker.broker import Broker
from conveyor.core import validation, wire
from conveyor.core.errors import ConveyorError, InvalidArgument, SessionNotFound, Unauthorized
from conveyor.core.tasks import TaskSet
from conveyor.core.types import Delivery, Message, NewMessage, Result
from conveyor.server.metrics import render_metrics
from conveyor.server.openapi import openapi_document

log = logging.getLogger("conveyor.http")

MAX_REQUEST = 64 * 1024 * 1024
SHUTDOWN_GRACE = 1.0  # seconds requests in flight get to finish at shutdown
# Codes of the errors aiohttp raises itself (no route, wrong method, too large).
HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}
MESSAGE_FIELDS = frozenset(NewMessage.__struct_fields__) - {"body"}
_INT64_MIN = -validation.MAX_INT64 - 1
_JSON_VALUES = frozenset({"json", "result_json"})  # fields that hold any JSON value
SESSION_ID = re.compile(r"[!-~]{1,64}")  # what a session id from open_session can be


class SharedSession:
    """The server's own consumer session, for receives that name none."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.id: str | None = None
        self._lock = asyncio.Lock()

    async def session(self, capacity: int = 1) -> str:
        async with self._lock:
            if self.id is None:
                self.id = await self.broker.open_session("http", capacity=1000, timeout=60.0)
            return self.id

    async def keep_alive(self) -> None:
        while True:
            await asyncio.sleep(10)
            if self.id is not None:
                try:
                    await self.broker.heartbeat(self.id)
                except SessionNotFound:
                    self.id = None
                except ConveyorError as exc:
                    log.warning("heartbeat of the shared HTTP session: %s", exc)


class NamedSession:
    def __init__(self, session_id: str) -> None:
        self.id = session_id

    async def session(self, capacity: int = 1) -> str:
        return self.id


def _decode_body(item: dict[str, Any]) -> dict[str, Any]:
    """A message from JSON: exactly one of body, body_base64, json."""
    if not isinstance(item, dict):
        raise InvalidArgument("a message is a JSON object")
    given = [k for k in ("body", "body_base64", "json") if k in item]
    if len(given) != 1:
        raise InvalidArgument("a message has exactly one of body, body_base64 or json")
    unknown = set(item) - MESSAGE_FIELDS - {"body", "body_base64", "json"}
    if unknown:
        raise InvalidArgument(f"unknown message fields {sorted(unknown)}")
    out = {k: v for k, v in item.items() if k not in ("body", "body_base64", "json")}
    key = given[0]
    value = item[key]
    if key == "body":
        if not isinstance(value, str):
            raise InvalidArgument("body is a string (use json for other values)")
        out["body"] = value.encode()
    elif key == "body_base64":
        try:
            out["body"] = base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidArgument("body_base64 is not valid base64") from None
    else:
        out["body"] = msgspec.json.encode(value)
        headers = out.get("headers")
        if headers is None or isinstance(headers, dict):  # else refused as it is
            out["headers"] = {"content-type": "application/json", **(headers or {})}
    return out


def _body_fields(body: bytes | None) -> dict[str, Any]:
    if body is None:
        return {}
    try:
        return {"body": bytes(body).decode()}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode()}


def to_json(value: Any) -> Any:
    """Broker results as JSON-ready values, bodies as text or base64."""
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, Delivery | Message | Result):
        data = msgspec.to_builtins(value)
        data.pop("body", None)
        data.update(_body_fields(value.body))
        return data
    return msgspec.to_builtins(value)


class HttpApi:
    def __init__(self, broker: Broker, *, token: str | None = None) -> None:
        self.broker = broker
        self.token = token
        self.shared = SharedSession(broker)
        self.app = web.Application(client_max_size=MAX_REQUEST, middlewares=[self._errors])
        self._routes()
        self._runner: web.AppRunner | None = None
        self._tasks = TaskSet("http api")  # the shared session's keep-alive
        self.port = 0

    async def start(self, host: str, port: int, ssl_context: Any = None) -> None:
        # At shutdown, requests in flight get a moment to finish; long polls
        # (up to a minute) are then cancelled rather than waited for.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        self._tasks.spawn(self.shared.keep_alive())

    async def stop(self) -> None:
        await self._tasks.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.shared.id is not None:
            with contextlib.suppress(ConveyorError):
                await self.broker.close_session(self.shared.id)

    # -- plumbing ---------------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.token is not None and request.path not in ("/healthz",):
            # Header bytes that are not UTF-8 come as surrogates: compared
            # as the bytes they were, they simply do not match.
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
                return _failure(Unauthorized("missing or wrong bearer token"))
        try:
            return await handler(request)
        except ConveyorError as exc:
            return _failure(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # No such route, a wrong method, a request over the size limit:
            # typed JSON like every other error.
            response = _error(exc.status, HTTP_CODES.get(exc.status, "error"), exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, "error", f"internal error: {exc.__class__.__name__}")

    async def _json(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        too_deep = f"the request body nests arrays and objects deeper than {wire.MAX_DEPTH} levels"
        try:
            data = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            raise InvalidArgument(f"the request body is not JSON: {exc}") from None
        except RecursionError:  # msgspec's own guard, far deeper than MAX_DEPTH
            raise InvalidArgument(too_deep) from None
        if not isinstance(data, dict):
            raise InvalidArgument("the request body is a JSON object")
        if wire.nested_deeper(data, wire.MAX_DEPTH):
            raise InvalidArgument(too_deep)
        _check_integers(data)
        return data

    async def _op(self, name: str, args: dict[str, Any], request: web.Request) -> web.Response:
        session_id = request.headers.get("X-Conveyor-Session")
        if session_id and not SESSION_ID.fullmatch(session_id):
            # Header bytes that are not UTF-8 come as surrogates, which no store takes.
            raise InvalidArgument(
                "X-Conveyor-Session is the id of a session from POST /v1/sessions"
                f" (printable ASCII), not {validation.short_repr(session_id)}"
            )
        source: operations.SessionSource = NamedSession(session_id) if session_id else self.shared
        result = await operations.call(self.broker, name, args, source)
        return web.json_response(to_json(result), dumps=lambda v: msgspec.json.encode(v).decode())

    def _routes(self) -> None:
        r = self.app.router
        q = "/v1/queues/{queue}"

        def route(
            method: str,
            path: str,
            build: Callable[[web.Request, dict[str, Any]], tuple[str, dict[str, Any]]],
        ) -> None:
            async def handler(request: web.Request) -> web.Response:
                body = (
                    await self._json(request)
                    if method in ("POST", "PUT", "PATCH", "DELETE")
                    else {}
                )
                name, args = build(request, body)
                return await self._op(name, args, request)

            r.add_route(method, path, handler)

        def qn(request: web.Request) -> str:
            return request.match_info["queue"]

        def query(request: web.Request, key: str, kind: Callable[[str], Any], default: Any) -> Any:
            raw = request.query.get(key)
            if raw is None:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise InvalidArgument(f"bad query parameter {key}={raw!r}") from None

        route("GET", "/v1/queues", lambda rq, b: ("queues", {}))
        route(
            "PUT",
            q,
            lambda rq, b: (
                "create_queue",
                {
                    "queue": qn(rq),
                    "settings": _only(b, "settings", "exist_ok").get("settings", {}),
                    "exist_ok": b.get("exist_ok", True),
                },
            ),
        )
        route("GET", q, lambda rq, b: ("get_queue", {"queue": qn(rq)}))
        route("PATCH", q, lambda rq, b: ("configure_queue", {"queue": qn(rq), "settings": b}))
        route("DELETE", q, lambda rq, b: ("delete_queue", {"queue": qn(rq)}))
        route("POST", q + "/purge", lambda rq, b: ("purge", {"queue": qn(rq)}))
        route("GET", q + "/stats", lambda rq, b: ("stats", {"queue": qn(rq)}))
        route("POST", q + "/messages", lambda rq, b: ("enqueue", _enqueue_args(qn(rq), b)))
        route("POST", q + "/receive", lambda rq, b: ("receive", {**b, "queue": qn(rq)}))
        route(
            "GET",
            q + "/dead-letters",
            lambda rq, b: (
                "dead_letters",
                {
                    "queue": qn(rq),
                    "limit": query(rq, "limit", int, 100),
                    "after": rq.query.get("after"),
                },
            ),
        )
        route(
            "POST",
            q + "/redrive",
            lambda rq, b: ("redrive", {"queue": qn(rq), "ids": _only(b, "ids").get("ids")}),
        )
        for op in ("ack", "nack", "extend", "dead"):
            route("POST", f"/v1/{op}", lambda rq, b, op=op: (op, _settle_args(op, b)))  # type: ignore[misc]
        route(
            "POST",
            "/v1/topics/{topic}/publish",
            lambda rq, b: (
                "publish",
                {
                    "topic": rq.match_info["topic"],
                    "message": _decode_body(
                        _only(b, "message", "idempotency_key")["message"]
                        if "message" in b
                        else {k: v for k, v in b.items() if k != "idempotency_key"}
                    ),
                    "idempotency_key": b.get("idempotency_key"),
                },
            ),
        )
        route("GET", "/v1/bindings", lambda rq, b: ("bindings", {}))
        route("POST", "/v1/bindings", lambda rq, b: ("bind", b))
        route("DELETE", "/v1/bindings", lambda rq, b: ("unbind", b))
        route(
            "GET",
            "/v1/results/{id}",
            lambda rq, b: (
                "result",
                {"id": rq.match_info["id"], "timeout": query(rq, "timeout", float, 0.0)},
            ),
        )
        route("GET", "/v1/sessions", lambda rq, b: ("sessions", {}))
        r.add_post("/v1/sessions", self._open_session)
        r.add_post("/v1/sessions/{id}/heartbeat", self._heartbeat)
        r.add_delete("/v1/sessions/{id}", self._close_session)
        r.add_get("/healthz", self._health)
        r.add_get("/metrics", self._metrics)
        r.add_get("/openapi.json", self._openapi)

    # -- routes that are not broker operations ------------------------------------

    async def _open_session(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        unknown = set(body) - {"name", "capacity", "timeout"}
        if unknown:
            raise InvalidArgument(f"unknown fields {sorted(unknown)}")
        session = await self.broker.open_session(
            body.get("name", "http"), capacity=body.get("capacity", 1), timeout=body.get("timeout")
        )
        return web.json_response({"id": session})

    async def _heartbeat(self, request: web.Request) -> web.Response:
        await self.broker.heartbeat(request.match_info["id"])
        return web.json_response({"ok": True})

    async def _close_session(self, request: web.Request) -> web.Response:
        await self.broker.close_session(request.match_info["id"])
        return web.json_response({"ok": True})

    async def _health(self, request: web.Request) -> web.Response:
        await self.broker.queues()  # the store answers
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        text = await render_metrics(self.broker)
        return web.Response(
            body=text.encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(token=self.token is not None))


def _enqueue_args(queue: str, body: dict[str, Any]) -> dict[str, Any]:
    if "messages" in body:
        messages = _only(body, "messages", "idempotency_key")["messages"]
        if not isinstance(messages, list):
            raise InvalidArgument("messages is a list")
        return {
            "queue": queue,
            "messages": [_decode_body(m) for m in messages],
            "idempotency_key": body.get("idempotency_key"),
        }
    key = body.pop("idempotency_key", None)
    return {"queue": queue, "messages": [_decode_body(body)], "idempotency_key": key}


def _settle_args(op: str, body: dict[str, Any]) -> dict[str, Any]:
    items = body.get("items")
    if not isinstance(items, list):
        raise InvalidArgument(f"{op} takes {{items: [...]}}")
    if op == "ack":
        out = []
        for raw in items:
            item = dict(raw) if isinstance(raw, dict) else raw
            if isinstance(item, dict):
                if "result" in item:
                    if not isinstance(item["result"], str | None):
                        raise InvalidArgument(
                            "result is a string (use result_json or result_base64 otherwise)"
                        )
                    if item["result"] is not None:
                        item["result"] = item["result"].encode()
                elif "result_base64" in item:
                    try:
                        item["result"] = base64.b64decode(item.pop("result_base64"), validate=True)
                    except (binascii.Error, TypeError, ValueError):
                        raise InvalidArgument("result_base64 is not valid base64") from None
                elif "result_json" in item:
                    item["result"] = msgspec.json.encode(item.pop("result_json"))
            out.append(item)
        items = out
    return {"items": items}


def _check_integers(document: Any) -> None:
    """JSON integers are 64-bit, as on the native protocol and in every store
    (a ``json`` body or ``result_json`` is the user's own: stored as its text)."""
    containers = [document]
    while containers:
        container = containers.pop()
        if isinstance(container, dict):
            container = [v for k, v in container.items() if k not in _JSON_VALUES]
        for value in container:
            if isinstance(value, dict | list):
                containers.append(value)
            elif (
                type(value) is int
                and not -validation.MAX_INT64 - 1 <= value <= validation.MAX_INT64
            ):
                raise InvalidArgument(f"integer {validation.short_repr(value)} exceeds 64 bits")


def _only(body: dict[str, Any], *fields: str) -> dict[str, Any]:
    unknown = set(body) - set(fields)
    if unknown:
        raise InvalidArgument(f"unknown fields {sorted(unknown)}; expected {', '.join(fields)}")
    return body


def _failure(exc: ConveyorError) -> web.Response:
    """A Conveyor error as its JSON, with the status its class declares."""
    return _error(exc.http_status, exc.code, exc.message)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
