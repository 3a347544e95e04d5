"""A message's fields are declared once, by NewMessage: MessageOptions (the
keyword form the Broker takes) is NewMessage's fields but its body, with the
same types, so the two cannot drift apart."""

from __future__ import annotations

import typing

from conveyor.core.types import MessageOptions, NewMessage


def test_message_options_are_new_messages_fields_but_its_body() -> None:
    options = typing.get_type_hints(MessageOptions)
    fields = typing.get_type_hints(NewMessage)
    del fields["body"]
    assert options == fields


def test_every_option_builds_the_same_message_as_the_struct() -> None:
    options: MessageOptions = {
        "priority": 9,
        "delay": 1.5,
        "ttl": 60.0,
        "dedup_key": "k",
        "group": "g",
        "headers": {"a": "b"},
        "max_attempts": 3,
    }
    message = NewMessage(body=b"x", **options)
    assert {name: getattr(message, name) for name in options} == options


def test_the_http_apis_message_schema_has_the_same_options() -> None:
    from conveyor.server.openapi import openapi_document

    schema = openapi_document()["components"]["schemas"]["MessageJson"]
    bodies = {"body", "body_base64", "json"}
    assert set(schema["properties"]) - bodies == set(typing.get_type_hints(MessageOptions))


def test_an_option_that_may_be_none_is_nullable_in_the_http_schema() -> None:
    """null means "not given" over HTTP as None does in NewMessage (a fuzzed
    publish with ``"delay": null`` was accepted while the schema refused it)."""
    from conveyor.server.openapi import openapi_document

    properties = openapi_document()["components"]["schemas"]["MessageJson"]["properties"]
    for name, hint in typing.get_type_hints(MessageOptions).items():
        nullable = {"type": "null"} in properties[name].get("anyOf", [])
        assert nullable == (type(None) in typing.get_args(hint)), name
