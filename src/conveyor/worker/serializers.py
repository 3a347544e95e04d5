"""How task arguments and results become message bodies. JSON by default;
any object with ``dumps``, ``loads`` and ``content_type`` will do."""

from __future__ import annotations

from typing import Any, Protocol

import msgspec


class Serializer(Protocol):
    content_type: str

    def dumps(self, value: Any) -> bytes: ...
    def loads(self, data: bytes) -> Any: ...


class JsonSerializer:
    content_type = "application/json"

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()

    def dumps(self, value: Any) -> bytes:
        return self._encoder.encode(value)

    def loads(self, data: bytes) -> Any:
        return self._decoder.decode(data)
