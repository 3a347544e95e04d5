"""The HTTP API of a real ``conveyor serve`` process, route by route:
queues, messages, long-polling receive, batch settles, dead letters,
topics, results, sessions, /healthz, /metrics, /openapi.json, and typed
JSON errors with stable codes and the right statuses."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from http.client import HTTPConnection
from typing import Any

from integration_support import Http, HttpReply, ServerProcess, StartServer

from conveyor.broker.broker import Broker
from conveyor.core import wire
from conveyor.server.http import HttpApi
from conveyor.store.sqlite.store import SqliteStore


def ok(reply: HttpReply) -> Any:
    assert reply.status == 200, reply
    return reply.json()


def make_queue(http: Http, queue: str, **settings: Any) -> dict[str, Any]:
    config: dict[str, Any] = ok(http.put(f"/v1/queues/{queue}", {"settings": settings}))
    return config


def send(http: Http, queue: str, **message: Any) -> str:
    (result,) = ok(http.post(f"/v1/queues/{queue}/messages", message))
    assert result["duplicate"] is False
    message_id: str = result["id"]
    return message_id


def receive(http: Http, queue: str, **args: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = ok(http.post(f"/v1/queues/{queue}/receive", args))
    return got


def settle(http: Http, op: str, *items: dict[str, Any]) -> list[dict[str, Any]]:
    outcomes: list[dict[str, Any]] = ok(http.post(f"/v1/{op}", {"items": list(items)}))
    assert len(outcomes) == len(items)
    return outcomes


def stats(http: Http, queue: str) -> dict[str, Any]:
    found: dict[str, Any] = ok(http.get(f"/v1/queues/{queue}/stats"))
    return found


# -- queues -----------------------------------------------------------------------------


def test_queue_lifecycle(http: Http, queue: str) -> None:
    config = make_queue(http, queue, max_attempts=3, visibility_timeout=12.5)
    assert (config["name"], config["max_attempts"], config["visibility_timeout"]) == (
        queue,
        3,
        12.5,
    )
    assert make_queue(http, queue, max_attempts=3, visibility_timeout=12.5)["name"] == queue
    assert ok(http.get(f"/v1/queues/{queue}"))["max_attempts"] == 3
    assert queue in {q["name"] for q in ok(http.get("/v1/queues"))}
    changed = ok(http.patch(f"/v1/queues/{queue}", {"visibility_timeout": 5}))
    assert changed["visibility_timeout"] == 5 and changed["max_attempts"] == 3

    send(http, queue, body="one")
    send(http, queue, body="two")
    assert stats(http, queue)["ready"] == 2
    assert ok(http.post(f"/v1/queues/{queue}/purge")) == 2
    assert stats(http, queue)["ready"] == 0

    assert ok(http.delete(f"/v1/queues/{queue}")) is None
    gone = http.get(f"/v1/queues/{queue}")
    assert (gone.status, gone.error_code()) == (404, "queue_not_found")
    assert queue not in {q["name"] for q in ok(http.get("/v1/queues"))}


# -- messages and receive -------------------------------------------------------------


def test_enqueue_forms_and_receive_them_back(http: Http, queue: str) -> None:
    make_queue(http, queue)
    text_id = send(http, queue, body="plain text", priority=1, headers={"a": "b"})
    binary = bytes(range(200, 256))
    binary_id = send(http, queue, body_base64=base64.b64encode(binary).decode(), priority=1)
    json_id = send(http, queue, json={"pizza": "margherita"}, priority=9, group="table-1")
    dedup = http.post(f"/v1/queues/{queue}/messages", {"body": "x", "dedup_key": "d1"})
    dedup_id = ok(dedup)[0]["id"]
    again = ok(http.post(f"/v1/queues/{queue}/messages", {"body": "y", "dedup_key": "d1"}))
    assert again == [{"id": dedup_id, "duplicate": True}]

    batch = {"messages": [{"body": "b1"}, {"json": [1, 2]}], "idempotency_key": "batch-1"}
    first = ok(http.post(f"/v1/queues/{queue}/messages", batch))
    assert ok(http.post(f"/v1/queues/{queue}/messages", batch)) == first  # a retry stores nothing
    send(http, queue, body="later", delay=30)
    send(http, queue, body="short-lived", ttl=60, max_attempts=1)

    s = stats(http, queue)
    assert (s["ready"], s["scheduled"], s["enqueued_total"]) == (7, 1, 8)

    got = receive(http, queue, max=10, visibility=20)
    assert [d["id"] for d in got[:3]] == [json_id, text_id, binary_id]  # priority, then order
    by_id = {d["id"]: d for d in got}
    assert by_id[json_id]["body"] == '{"pizza":"margherita"}'
    assert by_id[json_id]["headers"] == {"content-type": "application/json"}
    assert by_id[json_id]["group"] == "table-1" and by_id[json_id]["priority"] == 9
    assert by_id[text_id]["body"] == "plain text" and by_id[text_id]["headers"] == {"a": "b"}
    assert "body" not in by_id[binary_id]
    assert base64.b64decode(by_id[binary_id]["body_base64"]) == binary
    for d in got:
        assert set(d) >= {"id", "queue", "token", "attempts", "deadline", "lease", "headers"}
        assert d["queue"] == queue and d["attempts"] == 1 and d["lease"] == 20
    assert len(got) == 7
    outcomes = settle(http, "ack", *({"id": d["id"], "token": d["token"]} for d in got))
    assert outcomes == [{"ok": True}] * 7
    assert stats(http, queue)["acked_total"] == 7


def test_receive_long_polls(http: Http, queue: str) -> None:
    make_queue(http, queue)
    box: dict[str, Any] = {}

    def poll() -> None:
        box["got"] = receive(http, queue, max=5, wait=10)

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)
    message_id = send(http, queue, body="ding")
    thread.join(15)
    assert not thread.is_alive()
    # The poll came back with the message that arrived while it waited.
    assert [d["id"] for d in box["got"]] == [message_id]

    start = time.monotonic()
    assert receive(http, queue, wait=0.6) == []
    # A lower bound, kept: the empty poll waited what it asked (load only
    # makes that longer).
    assert time.monotonic() - start >= 0.55
    settle(http, "ack", {"id": message_id, "token": box["got"][0]["token"]})


def test_batch_settles_with_mixed_outcomes(http: Http, queue: str) -> None:
    make_queue(http, queue, max_attempts=5)
    ids = [send(http, queue, body=f"m{i}") for i in range(4)]
    got = receive(http, queue, max=4, visibility=30)
    token = {d["id"]: d["token"] for d in got}
    a, b, c, d = ids

    outcomes = settle(
        http,
        "ack",
        {"id": a, "token": token[a], "result_json": {"answer": 42}},
        {"id": b, "token": token[b] + 100},  # a stale token: refused, changes nothing
    )
    assert outcomes[0] == {"ok": True}
    assert outcomes[1]["ok"] is False and outcomes[1]["code"] == "lease_lost"
    assert outcomes[1]["message"]

    (extended,) = settle(http, "extend", {"id": b, "token": token[b], "seconds": 60})
    assert extended["ok"] is True and extended["deadline"] > time.time() + 50

    nacked = settle(
        http,
        "nack",
        {"id": b, "token": token[b], "delay": 30, "error": "try later"},
        {"id": c, "token": token[c], "delay": 0},
    )
    assert nacked == [{"ok": True}, {"ok": True}]
    (dead,) = settle(http, "dead", {"id": d, "token": token[d], "reason": "poison"})
    assert dead == {"ok": True}

    s = stats(http, queue)
    assert (s["ready"], s["scheduled"], s["leased"], s["dead"]) == (1, 1, 0, 1)
    assert (s["acked_total"], s["nacked_total"], s["dead_total"]) == (1, 2, 1)

    result = ok(http.get(f"/v1/results/{a}"))
    assert result["status"] == "ok" and json.loads(result["body"]) == {"answer": 42}
    (again,) = receive(http, queue)
    assert again["id"] == c and again["attempts"] == 2
    text = settle(http, "ack", {"id": c, "token": again["token"], "result": "done"})
    assert text == [{"ok": True}]
    assert ok(http.get(f"/v1/results/{c}"))["body"] == "done"
    assert http.post("/v1/ack", {"items": [{"id": c, "token": 1, "result": 7}]}).status == 400


def test_dead_letters_and_redrive(http: Http, queue: str) -> None:
    make_queue(http, queue, max_attempts=1)
    ids = [send(http, queue, body=f"d{i}") for i in range(3)]
    got = receive(http, queue, max=3)
    settle(http, "nack", *({"id": d["id"], "token": d["token"], "error": "boom"} for d in got))
    dead = ok(http.get(f"/v1/queues/{queue}/dead-letters"))
    assert [m["id"] for m in dead] == ids
    assert all(m["last_error"] == "boom" and m["dead_reason"] for m in dead)
    assert dead[0]["body"] == "d0" and dead[0]["state"] == 3
    assert [m["id"] for m in ok(http.get(f"/v1/queues/{queue}/dead-letters?limit=1"))] == ids[:1]
    after = ok(http.get(f"/v1/queues/{queue}/dead-letters?after={ids[0]}"))
    assert [m["id"] for m in after] == ids[1:]
    dead_result = ok(http.get(f"/v1/results/{ids[0]}"))
    assert dead_result["status"] == "dead" and dead_result["error"]

    assert ok(http.post(f"/v1/queues/{queue}/redrive", {"ids": [ids[2]]})) == 1
    assert ok(http.post(f"/v1/queues/{queue}/redrive", {})) == 2
    assert ok(http.get(f"/v1/queues/{queue}/dead-letters")) == []
    assert stats(http, queue)["ready"] == 3


def test_topics_and_bindings(http: Http, queue: str) -> None:
    a, b = f"{queue}-a", f"{queue}-b"
    make_queue(http, a)
    make_queue(http, b)
    topic = f"shop.{queue}.created"
    assert ok(http.post("/v1/bindings", {"pattern": topic, "queue": a})) is None
    assert ok(http.post("/v1/bindings", {"pattern": f"shop.{queue}.*", "queue": b})) is None
    bindings = ok(http.get("/v1/bindings"))
    assert {"pattern": topic, "queue": a} in bindings

    sent = ok(http.post(f"/v1/topics/{topic}/publish", {"json": {"n": 1}, "priority": 2}))
    assert set(sent) == {a, b}
    nested = {"message": {"body": "again"}, "idempotency_key": "pub-1"}
    first = ok(http.post(f"/v1/topics/{topic}/publish", nested))
    assert ok(http.post(f"/v1/topics/{topic}/publish", nested)) == first
    for name in (a, b):
        got = receive(http, name, max=10)
        assert [d["id"] for d in got] == [sent[name]["id"], first[name]["id"]]
        assert got[0]["priority"] == 2 and got[1]["body"] == "again"
        settle(http, "ack", *({"id": d["id"], "token": d["token"]} for d in got))

    assert ok(http.delete("/v1/bindings", {"pattern": topic, "queue": a})) is True
    assert ok(http.delete("/v1/bindings", {"pattern": topic, "queue": a})) is False
    assert set(ok(http.post(f"/v1/topics/{topic}/publish", {"body": "x"}))) == {b}
    assert ok(http.post("/v1/topics/nobody.here/publish", {"body": "x"})) == {}


def test_results_wait_for_the_ack(http: Http, queue: str) -> None:
    make_queue(http, queue)
    message_id = send(http, queue, body="compute")
    waiting = http.get(f"/v1/results/{message_id}?timeout=0.2")
    assert (waiting.status, waiting.error_code()) == (408, "result_timeout")
    (d,) = receive(http, queue)

    def ack_later() -> None:
        time.sleep(0.4)
        settle(http, "ack", {"id": d["id"], "token": d["token"], "result_base64": "/wAB"})

    thread = threading.Thread(target=ack_later)
    thread.start()
    # Answered with the result once it came, within the request's timeout.
    result = ok(http.get(f"/v1/results/{message_id}?timeout=30"))
    thread.join()
    assert result["id"] == message_id and result["status"] == "ok"
    assert base64.b64decode(result["body_base64"]) == b"\xff\x00\x01"


def test_sessions_hold_leases_until_closed_or_expired(http: Http, queue: str) -> None:
    make_queue(http, queue, visibility_timeout=60)
    m1, m2 = send(http, queue, body="one"), send(http, queue, body="two")

    session = ok(http.post("/v1/sessions", {"name": "http-worker", "capacity": 5, "timeout": 30}))
    sid = session["id"]
    assert any(s["id"] == sid and s["name"] == "http-worker" for s in ok(http.get("/v1/sessions")))
    headers = {"X-Conveyor-Session": sid}
    (got,) = ok(http.post(f"/v1/queues/{queue}/receive", {"max": 1}, headers=headers))
    assert got["id"] == m1
    assert ok(http.post(f"/v1/sessions/{sid}/heartbeat")) == {"ok": True}
    assert ok(http.delete(f"/v1/sessions/{sid}")) == {"ok": True}
    # Closing the session released its lease at once, long before 60 s.
    s = stats(http, queue)
    assert (s["ready"], s["leased"]) == (2, 0)
    closed = http.post(f"/v1/sessions/{sid}/heartbeat")
    assert (closed.status, closed.error_code()) == (404, "session_not_found")
    refused = http.post(f"/v1/queues/{queue}/receive", {}, headers=headers)
    assert (refused.status, refused.error_code()) == (404, "session_not_found")

    short = ok(http.post("/v1/sessions", {"name": "forgetful", "timeout": 0.5}))["id"]
    got2 = ok(http.post(f"/v1/queues/{queue}/receive", {"max": 2}, headers={
        "X-Conveyor-Session": short}))  # fmt: skip
    assert {d["id"] for d in got2} == {m1, m2}
    assert stats(http, queue)["leased"] == 2
    deadline = time.monotonic() + 10
    while stats(http, queue)["leased"]:  # no heartbeat: the session expires
        assert time.monotonic() < deadline, "the silent session's leases were not released"
        time.sleep(0.1)
    assert stats(http, queue)["ready"] == 2
    assert ok(http.post(f"/v1/queues/{queue}/purge")) == 2


# -- health, metrics, OpenAPI -----------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format 0.0.4, checked line by line: every sample's
    family was announced with HELP and TYPE; samples by name+labels."""
    families: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in families, f"family {name} announced twice"
            families[name] = ""
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name in families and kind in ("counter", "gauge"), line
            families[name] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            assert families.get(name), f"sample of an unannounced family: {line!r}"
            key = name + (labels or "")
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = float(value)
    return samples


def test_healthz_and_metrics(http: Http, queue: str) -> None:
    health = http.get("/healthz")
    assert (health.status, health.json()) == (200, {"status": "ok"})

    make_queue(http, queue, max_attempts=1)
    for i in range(4):
        send(http, queue, body=f"m{i}")
    send(http, queue, body="later", delay=60)
    got = receive(http, queue, max=2)
    settle(http, "dead", {"id": got[0]["id"], "token": got[0]["token"], "reason": "x"})
    # now: 2 ready, 1 scheduled, 1 leased, 1 dead

    reply = http.get("/metrics")
    assert reply.status == 200
    content_type = reply.content_type.replace(" ", "")
    assert content_type.startswith("text/plain;"), content_type
    assert "version=0.0.4" in content_type, content_type
    samples = parse_metrics(reply.text)
    q = f'queue="{queue}"'
    for state, count in (("ready", 2), ("scheduled", 1), ("leased", 1), ("dead", 1)):
        assert samples[f'conveyor_queue_messages{{{q},state="{state}"}}'] == count, state
    assert samples[f"conveyor_queue_enqueued_total{{{q}}}"] == 5
    assert samples[f"conveyor_queue_delivered_total{{{q}}}"] == 2
    assert samples[f"conveyor_queue_dead_total{{{q}}}"] == 1
    assert samples[f"conveyor_queue_consumers{{{q}}}"] >= 1
    assert samples[f"conveyor_queue_oldest_ready_seconds{{{q}}}"] >= 0
    assert samples["conveyor_sessions"] >= 1
    assert any(k.startswith("conveyor_store_") for k in samples), sorted(samples)
    assert ok(http.post(f"/v1/queues/{queue}/purge")) == 3  # ready and scheduled


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the HTTP API registers (built here, not started)."""
    api = HttpApi(Broker(SqliteStore(None, durability="memory")))
    routes = set()
    for route in api.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD":
            routes.add((route.method.lower(), str(path)))
    return routes


def test_openapi_lists_every_route(http: Http) -> None:
    reply = http.get("/openapi.json")
    assert reply.status == 200
    document = json.loads(reply.raw)
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] and document["info"]["version"]
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    routes = served_routes()
    assert len(routes) > 25
    assert routes == documented, (
        f"served but not documented: {sorted(routes - documented)}; "
        f"documented but not served: {sorted(documented - routes)}"
    )
    operation_ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
    schemas = document["components"]["schemas"]
    for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)):
        assert ref in schemas, f"dangling $ref {ref}"
    receive_body = document["paths"]["/v1/queues/{queue}/receive"]["post"]["requestBody"]
    schema = receive_body["content"]["application/json"]["schema"]
    assert "queue" not in schema.get("required", [])  # the path names it


# -- errors -------------------------------------------------------------------------------


def test_errors_are_typed_json(http: Http, server: ServerProcess, queue: str) -> None:
    make_queue(http, queue, max_length=1)
    missing = f"{queue}-missing"
    big = "x" * ((1 << 20) + 1)
    cases: list[tuple[HttpReply, int, str]] = [
        (http.post(f"/v1/queues/{missing}/messages", {"body": "x"}), 404, "queue_not_found"),
        (http.get(f"/v1/queues/{missing}/stats"), 404, "queue_not_found"),
        (http.post(f"/v1/queues/{queue}/messages", {"body": "x", "priority": 12}), 400,
         "invalid_argument"),
        (http.post(f"/v1/queues/{queue}/messages", {"body": "x", "prority": 1}), 400,
         "invalid_argument"),
        (http.post(f"/v1/queues/{queue}/messages", {"body": 5}), 400, "invalid_argument"),
        (http.post(f"/v1/queues/{queue}/messages", {"body": "x", "json": 1}), 400,
         "invalid_argument"),
        (http.post(f"/v1/queues/{queue}/messages", {"body_base64": "!!"}), 400,
         "invalid_argument"),
        (http.post(f"/v1/queues/{queue}/messages", raw=b"{not json"), 400, "invalid_argument"),
        (http.post(f"/v1/queues/{queue}/messages", raw=b"[1, 2]"), 400, "invalid_argument"),
        (http.post(f"/v1/queues/{queue}/messages", {"body": big}), 413, "body_too_large"),
        (http.post(f"/v1/queues/{queue}/receive", {"max": 0}), 400, "invalid_argument"),
        (http.post(f"/v1/queues/{queue}/receive", {"wait": "soon"}), 400, "invalid_argument"),
        (http.put("/v1/queues/bad%20name"), 400, "invalid_argument"),
        (http.put(f"/v1/queues/{queue}", {"max_attempts": 3}), 400, "invalid_argument"),
        (http.put(f"/v1/queues/{queue}", {"settings": {"bogus": 1}}), 400, "invalid_argument"),
        (http.put(f"/v1/queues/{queue}", {"settings": {"max_length": 2}, "exist_ok": False}),
         409, "queue_exists"),
        (http.post("/v1/ack", {"items": "nope"}), 400, "invalid_argument"),
        (http.post("/v1/ack", {"items": [{"id": "zz", "token": 1}]}), 400, "invalid_argument"),
        (http.post("/v1/bindings", {"pattern": "a.b"}), 400, "invalid_argument"),
        (http.get(f"/v1/queues/{queue}/dead-letters?limit=lots"), 400, "invalid_argument"),
        (http.get("/v1/results/0123456789abcdef?timeout=0"), 408, "result_timeout"),
        (http.get("/v1/results/not-an-id"), 400, "invalid_argument"),
        (http.post("/v1/sessions", {"nmae": "typo"}), 400, "invalid_argument"),
        (http.post("/v1/sessions/nope/heartbeat"), 404, "session_not_found"),
        (http.get("/v1/no/such/route"), 404, "not_found"),
        (http.request("DELETE", "/healthz"), 405, "method_not_allowed"),
        (http.request("POST", "/v1/queues"), 405, "method_not_allowed"),
    ]  # fmt: skip
    send(http, queue, body="fills it")
    full = http.post(f"/v1/queues/{queue}/messages", {"body": "one too many"})
    cases.append((full, 429, "queue_full"))
    failures = []
    for reply, status, code in cases:
        if reply.status != status or not reply.content_type.startswith("application/json"):
            failures.append((status, code, reply))
            continue
        if reply.error_code() != code:
            failures.append((status, code, reply))
    assert not failures, "\n".join(f"expected {s} {c}, got {r!r}" for s, c, r in failures)
    assert "GET" in http.request("DELETE", "/healthz").headers.get("allow", "")
    assert stats(http, queue)["ready"] == 1  # nothing refused was stored
    assert server.alive()


# -- issue 13: bad inputs that used to be internal errors (each a regression test) ------


def assert_refused(reply: HttpReply, status: int, code: str, *mentions: str) -> None:
    assert reply.status == status, reply
    assert reply.error_code() == code, reply
    message = reply.json()["error"]["message"]
    assert all(m in message for m in mentions), message


def test_settings_named_like_parameters_are_unknown_settings(http: Http, queue: str) -> None:
    make_queue(http, queue)
    for body in ({"name": "x"}, {"self": 1}, {"exist_ok": False}, {"queue": "other"}):
        (name,) = body
        reply = http.patch(f"/v1/queues/{queue}", body)
        assert_refused(reply, 400, "invalid_argument", repr(name), "visibility_timeout")
    for settings in ({"exist_ok": False}, {"name": "x"}, {"self": 1}):
        reply = http.put(f"/v1/queues/{queue}-new", {"settings": settings})
        assert_refused(reply, 400, "invalid_argument", "unknown queue setting")
    assert http.get(f"/v1/queues/{queue}-new").status == 404  # nothing was created


def nested_json(levels: int) -> bytes:
    """A request body whose ``json`` value makes the document ``levels`` deep."""
    inner = levels - 1  # the body object is level 1
    return b'{"json": ' + b"[" * inner + b"]" * inner + b"}"


def test_json_nested_past_the_depth_limit_is_refused(http: Http, queue: str) -> None:
    make_queue(http, queue)
    path = f"/v1/queues/{queue}/messages"
    assert http.post(path, raw=nested_json(wire.MAX_DEPTH)).status == 200
    for levels in (wire.MAX_DEPTH + 1, 5_000, 200_000):
        reply = http.post(path, raw=nested_json(levels))
        assert_refused(reply, 400, "invalid_argument", f"deeper than {wire.MAX_DEPTH} levels")
    deep_setting = b'{"max_attempts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reply = http.patch(f"/v1/queues/{queue}", raw=deep_setting)
    assert_refused(reply, 400, "invalid_argument", "deeper than")
    assert stats(http, queue)["ready"] == 1


def test_json_integers_past_64_bits_are_refused(http: Http, queue: str) -> None:
    make_queue(http, queue)
    message_id = send(http, queue, body="x")
    for token in (2**63, 2**64, -(2**63) - 1, 10**40):
        reply = http.post("/v1/ack", {"items": [{"id": message_id, "token": token}]})
        assert_refused(reply, 400, "invalid_argument", "64 bits")
    reply = http.patch(f"/v1/queues/{queue}", {"max_length": 10**30})
    assert_refused(reply, 400, "invalid_argument", "64 bits")
    # A json body is the user's own value: stored as its text, whatever its numbers.
    assert http.post(f"/v1/queues/{queue}/messages", {"json": {"n": 10**30}}).status == 200
    for bad_id in ("ffffffffffffffff", "8000000000000000"):
        reply = http.get(f"/v1/results/{bad_id}")
        assert_refused(reply, 400, "invalid_argument", "7fffffffffffffff")


def test_unknown_fields_beside_a_batch_or_a_wrapped_message_are_refused(
    http: Http, queue: str
) -> None:
    make_queue(http, queue)
    ok(http.post("/v1/bindings", {"pattern": f"{queue}.#", "queue": queue}))
    batch = {"messages": [{"body": "a"}], "priority": 5}
    assert_refused(http.post(f"/v1/queues/{queue}/messages", batch), 400, "invalid_argument",
                   "priority")  # fmt: skip
    wrapped = {"message": {"body": "a"}, "delay": 5}
    assert_refused(http.post(f"/v1/topics/{queue}.x/publish", wrapped), 400, "invalid_argument",
                   "delay")  # fmt: skip
    assert_refused(http.post(f"/v1/queues/{queue}/redrive", {"ids": None, "all": True}), 400,
                   "invalid_argument", "all")  # fmt: skip
    assert stats(http, queue)["ready"] == 0


def test_a_json_body_with_headers_that_are_not_a_map_is_refused(http: Http, queue: str) -> None:
    """Found by the fuzzer: the content-type header of a json body was added
    to the headers before they were checked (a TypeError, 500)."""
    make_queue(http, queue)
    ok(http.post("/v1/bindings", {"pattern": f"{queue}.#", "queue": queue}))
    for headers in (-4928, "text", [["a", "b"]]):
        message = {"json": [], "headers": headers}
        reply = http.post(f"/v1/queues/{queue}/messages", message)
        assert_refused(reply, 400, "invalid_argument", "headers")
        reply = http.post(f"/v1/topics/{queue}.x/publish", {"message": message})
        assert_refused(reply, 400, "invalid_argument", "headers")
    got = ok(http.post(f"/v1/queues/{queue}/messages", {"json": [1], "headers": {"a": "b"}}))
    assert len(got) == 1
    (delivery,) = receive(http, queue)
    assert delivery["headers"] == {"content-type": "application/json", "a": "b"}


def test_an_authorization_header_that_is_not_ascii_gets_401(start_server: StartServer) -> None:
    server = start_server("--token", "s3cret")
    for value in (b"Bearer \xff\xfe", "Bearer é".encode(), "Bearer é".encode("latin-1"), b"\x80"):
        conn = HTTPConnection("127.0.0.1", server.http_port, timeout=10)
        try:
            conn.putrequest("GET", "/v1/queues")
            conn.putheader("Authorization", value)
            conn.endheaders()
            response = conn.getresponse()
            body = json.loads(response.read())
        finally:
            conn.close()
        assert response.status == 401, (value, body)
        assert body["error"]["code"] == "unauthorized"
    good = Http(server.http_url).get("/v1/queues", headers={"Authorization": "Bearer s3cret"})
    assert good.status == 200
    assert "Traceback" not in server.log_text()


def test_a_session_header_that_is_not_ascii_gets_invalid_argument(http: Http, queue: str) -> None:
    """Found by the fuzzer: X-Conveyor-Session of bytes that are not UTF-8
    reached SQLite as surrogates (a UnicodeEncodeError, 500)."""
    make_queue(http, queue)
    send(http, queue, body="x")
    for value in (b"\xff", "é".encode(), b"x" * 65, b"a b"):
        conn = HTTPConnection("127.0.0.1", int(http.base.rsplit(":", 1)[1]), timeout=10)
        try:
            conn.putrequest("POST", f"/v1/queues/{queue}/receive")
            conn.putheader("X-Conveyor-Session", value)
            conn.putheader("Content-Length", "2")
            conn.endheaders(b"{}")
            response = conn.getresponse()
            body = json.loads(response.read())
        finally:
            conn.close()
        assert response.status == 400, (value, body)
        assert body["error"]["code"] == "invalid_argument"
        assert "X-Conveyor-Session" in body["error"]["message"]
    assert stats(http, queue)["leased"] == 0
