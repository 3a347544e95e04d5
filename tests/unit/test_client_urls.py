"""Broker URLs (client/urls.py): where the token comes from, and that a URL
shown in a message never shows it."""

from __future__ import annotations

import pytest

from conveyor.client.native import NativeTransport
from conveyor.client.urls import open_transport, redact, split_userinfo


@pytest.mark.parametrize(
    ("netloc", "token", "hosts"),
    [
        (":T@h:7710", "T", "h:7710"),
        ("T@h", "T", "h"),
        ("user:T@h", "T", "h"),
        (":a%2Fb%40c@h1:7710,h2:7710", "a/b@c", "h1:7710,h2:7710"),
        (":@h", None, "h"),
        ("h1,h2", None, "h1,h2"),
    ],
)
def test_the_token_in_the_userinfo(netloc: str, token: str | None, hosts: str) -> None:
    assert split_userinfo(netloc) == (token, hosts)


def test_every_address_of_a_url_with_a_token() -> None:
    transport = open_transport("conveyor://:T@h1:7710,[::1]:7711,h3")
    assert isinstance(transport, NativeTransport)
    assert transport.addresses == [("h1", 7710), ("::1", 7711), ("h3", 7710)]
    assert transport.token == "T"


def test_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_TOKEN", "env")
    assert open_transport("conveyor://:u@h?token=q", token="arg").token == "arg"
    assert open_transport("conveyor://:u@h?token=q").token == "u"
    assert open_transport("conveyor://h?token=q").token == "q"
    assert open_transport("conveyor://h").token == "env"


def test_timeouts_reach_the_transport() -> None:
    transport = open_transport("conveyor://h", timeout=7.0, connect_timeout=0.5)
    assert (transport.timeout, transport.connect_timeout) == (7.0, 0.5)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("conveyor://:s3cret@h:7710", "conveyor://***@h:7710"),
        ("conveyor://s3cret@h1,h2?token=s3cret&x=1", "conveyor://***@h1,h2?token=***&x=1"),
        ("postgresql://u:s3cret@db/x?schema=s", "postgresql://***@db/x?schema=s"),
        ("conveyor://h:7710", "conveyor://h:7710"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown
