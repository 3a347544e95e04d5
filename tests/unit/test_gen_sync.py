"""scripts/gen_sync.py: the sync Client is the AsyncClient's code. Its calls
that hold no lease are the async ones made synchronous, and the generator
refuses one that could not run without an event loop, or whose text edit
would change more than ``async``, ``await`` and ``self._transport``."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import conveyor
from conveyor.client import aio, sync

SCRIPT = Path(__file__).resolve().parents[2] / "scripts/gen_sync.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_sync", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def async_client(body: str) -> tuple[str, ast.ClassDef]:
    src = "class AsyncClient:\n" + textwrap.indent(textwrap.dedent(body), "    ")
    (client,) = ast.parse(src).body
    assert isinstance(client, ast.ClassDef)
    return src, client


def method(client: ast.ClassDef, name: str) -> ast.AsyncFunctionDef:
    return next(n for n in client.body if isinstance(n, ast.AsyncFunctionDef) and n.name == name)


def test_a_call_is_copied_without_async_await_and_transport(gen: ModuleType) -> None:
    src, client = async_client('''
        async def stats(self, queue: str) -> int:
            """How many."""
            # a comment stays
            return await self._transport.call("stats", {"queue": queue})
    ''')
    copied = "\n".join(gen._unasync(src, method(client, "stats")))
    assert copied == textwrap.indent(
        textwrap.dedent('''\
            def stats(self, queue: str) -> int:
                """How many."""
                # a comment stays
                return self._calls.call("stats", {"queue": queue})'''),
        "    ",
    )


@pytest.mark.parametrize(
    "body",
    [
        "async def stats(self):\n    async for x in self._transport.stream():\n        pass\n",
        "async def stats(self):\n    await asyncio.sleep(1)\n",
        "async def stats(self):\n    async with self._lock:\n        pass\n",
    ],
)
def test_a_call_that_needs_an_event_loop_is_refused(gen: ModuleType, body: str) -> None:
    src, client = async_client(body)
    with pytest.raises(SystemExit, match="cannot run without an event loop"):
        gen._unasync(src, method(client, "stats"))


def test_a_text_edit_that_changes_more_is_refused(gen: ModuleType) -> None:
    src, client = async_client("""
        async def result(self) -> str:
            return "await the answer"
    """)
    with pytest.raises(SystemExit, match="changed more than"):
        gen._unasync(src, method(client, "result"))


def test_a_lease_free_call_may_not_use_a_leased_one(gen: ModuleType) -> None:
    _, client = async_client("""
        async def stats(self) -> None:
            await self.ack("id", 1)

        async def ack(self, id: str, token: int) -> None:
            await self._transport.call("ack", {})
    """)
    with pytest.raises(SystemExit, match=r"stats uses self\.ack"):
        gen._copied(client)


def test_the_generated_file_is_the_committed_one(gen: ModuleType) -> None:
    assert gen.formatted(gen.generate()) == Path(sync.__file__).read_text()


def public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member)
    }


def test_the_sync_client_has_every_call_of_the_async_one_with_its_signature() -> None:
    async_calls, sync_calls = public(aio.AsyncClient), public(sync.Client)
    assert async_calls.keys() == sync_calls.keys()
    for name, signature in async_calls.items():
        returns = str(signature.return_annotation).replace("AsyncIterator[", "Iterator[")
        assert sync_calls[name] == signature.replace(return_annotation=returns), name
    assert public(aio.Delivery).keys() == public(sync.Delivery).keys()
    assert (
        conveyor.Client is sync.Client
        and "asyncio" not in sys.modules["conveyor.client.sync"].__dict__
    )
