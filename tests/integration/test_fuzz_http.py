"""Fuzzing the HTTP API of a real ``conveyor serve``: schemathesis drives
every operation of the server's own OpenAPI document with data that fits
the schemas and data that breaks them, with and without a bearer token;
hypothesis adds what a schema cannot describe (bodies that are not JSON,
nesting around the depth limit, integers past 64 bits, Authorization
headers of any bytes).

Every response must be a 2xx or a 4xx, validate against the document
(status, content type, schema: JSON errors of the documented shape), and
data the document forbids must be refused. Afterwards the server has logged
no traceback and no ERROR line, and still serves a normal client.

Bounds: ``EXAMPLES`` examples per operation and generation mode (about 30
operations, two modes) and ``HOSTILE_EXAMPLES`` hostile requests, with no
per-example deadline (the machine is shared); each test takes well under a
minute here.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from integration_support import Http, ServerProcess, StartServer
from schemathesis import GenerationMode, checks

import conveyor
from conveyor.core import wire

EXAMPLES = 10
HOSTILE_EXAMPLES = 150
TOKEN = "fuzz-s3cret"
QUEUE = "fuzzed"
FUZZ_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


def assert_log_clean(server: ServerProcess) -> None:
    log = server.log_text()
    assert "Traceback" not in log, log[-5000:]
    assert not re.search(r" ERROR ", log), log[-5000:]


def assert_still_serving(server: ServerProcess, token: str | None = None) -> None:
    assert server.alive(), server.log_text()[-5000:]
    with conveyor.Client(server.url, timeout=10, token=token) as client:
        client.create_queue("after-fuzz")
        sent = client.enqueue("after-fuzz", b"still here")
        (got,) = client.receive("after-fuzz", wait=2)
        assert got.id == sent.id and got.body == b"still here"
        got.ack()


def prepare(server: ServerProcess, auth: dict[str, str]) -> None:
    """A queue the fuzzer's requests name half of the time, with messages."""
    api = Http(server.http_url)
    assert api.put(f"/v1/queues/{QUEUE}", {}, headers=auth).status == 200
    messages = {"messages": [{"body": f"m{i}"} for i in range(20)]}
    assert api.post(f"/v1/queues/{QUEUE}/messages", messages, headers=auth).status == 200


def fuzz_every_operation(
    server: ServerProcess, auth: dict[str, str], extra_checks: list[Callable[..., Any]]
) -> list[str]:
    """Each operation of the served document, in both generation modes; the
    failures found, as text."""
    schema = schemathesis.openapi.from_url(f"{server.http_url}/openapi.json", headers=auth)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 25
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(mode)
            if "{queue}" in operation.path:  # half of the cases on a queue that exists
                strategy |= operation.as_strategy(mode, path_parameters={"queue": QUEUE})

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: schemathesis.Case) -> None:
                response = case.call(base_url=server.http_url, headers=auth, timeout=30)
                case.validate_response(response, checks=FUZZ_CHECKS + extra_checks, headers=auth)

            try:
                run()
            except Unsatisfiable:
                pass  # nothing in the document to break (only free strings), in negative mode
            except Exception as exc:
                failures.append(
                    f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}"
                )
    return failures


def test_the_api_fuzzed_from_its_openapi_document(start_server: StartServer) -> None:
    server = start_server()
    prepare(server, {})
    failures = fuzz_every_operation(server, {}, [])
    assert not failures, "\n\n".join(failures)
    assert_log_clean(server)
    assert_still_serving(server)


def test_the_api_fuzzed_with_a_bearer_token(start_server: StartServer) -> None:
    server = start_server("--token", TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    prepare(server, auth)
    document = json.loads(Http(server.http_url).get("/openapi.json", headers=auth).raw)
    assert document["security"] == [{"bearer": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []
    # ignored_auth: a request that succeeds with the token is sent again
    # without it and with a wrong one, and must then get 401.
    failures = fuzz_every_operation(server, auth, [checks.ignored_auth])
    assert not failures, "\n\n".join(failures)
    assert_log_clean(server)
    assert_still_serving(server, TOKEN)


# -- what a schema cannot describe ------------------------------------------------------


def raw_request(
    server: ServerProcess, method: str, path: str, body: bytes | None, headers: dict[str, bytes]
) -> tuple[int, bytes, str]:
    """A request with header values as raw bytes (urllib would encode them)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("Content-Type") or ""
    finally:
        conn.close()


def nested_json(levels: int, innermost: bytes = b"1") -> bytes:
    """A JSON document ``levels`` deep, as an object's value."""
    return b'{"a":' + b"[" * (levels - 1) + innermost + b"]" * (levels - 1) + b"}"


ROUTES = [
    ("PUT", f"/v1/queues/{QUEUE}"),
    ("PATCH", f"/v1/queues/{QUEUE}"),
    ("POST", f"/v1/queues/{QUEUE}/messages"),
    ("POST", f"/v1/queues/{QUEUE}/receive"),
    ("POST", f"/v1/queues/{QUEUE}/redrive"),
    ("POST", "/v1/ack"),
    ("POST", "/v1/nack"),
    ("POST", "/v1/topics/fuzz.a/publish"),
    ("POST", "/v1/bindings"),
    ("DELETE", "/v1/bindings"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/queues"),
]
BIG_INTS = st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -(10**400)]) | st.integers()
JSON_ATOMS = st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
JSON_VALUES = st.recursive(
    JSON_ATOMS | st.text(max_size=20) | BIG_INTS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    ["body", "json", "messages", "items", "settings", "max", "wait", "token", "id", "name",
     "visibility_timeout", "max_length", "capacity", "ids", "pattern", "queue", "exist_ok"]
)  # fmt: skip
BODIES = (
    st.binary(max_size=200)
    | st.integers(wire.MAX_DEPTH - 4, 5000).map(nested_json)
    | st.dictionaries(FIELDS, JSON_VALUES, max_size=4).map(lambda d: json.dumps(d).encode())
    | st.builds(lambda field, n: json.dumps({field: n}).encode(), FIELDS, BIG_INTS)
)
# Field-value bytes HTTP allows: visible ASCII, space, tab and obs-text (0x80-0xff).
# (Control characters make the request unparseable: aiohttp answers 400 itself.)
FIELD_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
AUTHORIZATION = st.binary(max_size=60).map(
    lambda b: bytes(FIELD_BYTES[x % len(FIELD_BYTES)] for x in b).strip()
) | st.sampled_from([b"Bearer \xff\xfe", "Bearer é".encode(), "Bearer é".encode("latin-1"), b""])
SESSION = st.sampled_from([b"\xff", "é".encode(), b"0" * 16, b"x" * 500])


@pytest.mark.parametrize("with_token", [False, True], ids=["open", "token"])
def test_hostile_requests_get_json_4xx(start_server: StartServer, with_token: bool) -> None:
    server = start_server(*(["--token", TOKEN] if with_token else []))
    good = {"Authorization": f"Bearer {TOKEN}".encode()} if with_token else {}
    prepare(server, {k: v.decode() for k, v in good.items()})

    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, database=None)
    @given(
        route=st.sampled_from(ROUTES),
        body=BODIES,
        authorization=st.none() | AUTHORIZATION,
        session=st.none() | SESSION,
    )
    def hostile(
        route: tuple[str, str], body: bytes, authorization: bytes | None, session: bytes | None
    ) -> None:
        headers = dict(good)
        if authorization is not None:
            headers["Authorization"] = authorization
        if session is not None:
            headers["X-Conveyor-Session"] = session
        headers["Content-Type"] = b"application/json"
        status, raw, content_type = raw_request(server, *route, body, headers)
        assert status < 500, (route, body[:200], headers, status, raw[:500])
        if status >= 400:
            assert content_type.startswith("application/json"), (status, raw[:300])
            error = json.loads(raw)["error"]
            assert set(error) == {"code", "message"} and error["message"], raw
            assert error["code"] != "error", raw

    hostile()
    assert_log_clean(server)
    assert_still_serving(server, TOKEN if with_token else None)
