"""Message ids: 16 lowercase hex digits of ``(unix ms << 20) | counter``,
unique, time-ordered, sorting as strings like the numbers they are."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.core.errors import InvalidArgument
from conveyor.core.ids import IdSequence, format_id, id_time, parse_id

SEQS = st.integers(min_value=0, max_value=(1 << 63) - 1)  # signed 64-bit in every store


@pytest.mark.parametrize(
    ("seq", "text"),
    [
        (0, "0000000000000000"),
        (1, "0000000000000001"),
        (255, "00000000000000ff"),
        ((1 << 63) - 1, "7fffffffffffffff"),
    ],
)
def test_format(seq: int, text: str) -> None:
    assert format_id(seq) == text
    assert parse_id(text) == seq


@given(SEQS)
def test_round_trip(seq: int) -> None:
    text = format_id(seq)
    assert len(text) == 16
    assert text == text.lower()
    assert parse_id(text) == seq


@given(SEQS, SEQS)
def test_string_order_is_numeric_order(a: int, b: int) -> None:
    assert (format_id(a) < format_id(b)) == (a < b)


@given(st.text(alphabet="0123456789abcdefABCDEFxX+-_ \n\t", min_size=16, max_size=16))
def test_every_accepted_id_is_canonical(text: str) -> None:
    """Whatever parse_id accepts must be the id that format_id makes, so one
    message has one spelling (apart from letter case)."""
    try:
        seq = parse_id(text)
    except InvalidArgument:
        return
    assert format_id(seq) == text.lower()


def test_upper_case_names_the_same_id() -> None:
    assert parse_id("00000000000000FF") == 255


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0",
        "000000000000000",  # 15 digits
        "00000000000000000",  # 17 digits
        "ggggggggggggggggg"[:16],
        "000000000000000z",
        "0000-00000000000",
        "-000000000000001",  # int() would read a negative number
        "+000000000000001",
        " 000000000000001",
        "000000000000001 ",
        "000000000000001\n",
        "0x00000000000001",
        "0000_00000000001",
        "０００００００００００００００１",  # full-width digits  # noqa: RUF001
        None,
        1,
        1.0,
        b"0000000000000001",
        ["0000000000000001"],
    ],
)
def test_bad_ids_raise_invalid_argument(value: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_id(value)


def test_sequence_grows_and_encodes_time() -> None:
    ids = IdSequence()
    now = 1_700_000_000.123
    first = ids.next(now)
    assert first >> 20 == int(now * 1000)
    assert abs(id_time(format_id(first)) - now) < 0.001


def test_sequence_within_one_millisecond_counts_up() -> None:
    ids = IdSequence()
    now = 1_700_000_000.0
    made = [ids.next(now) for _ in range(1000)]
    assert made == list(range(made[0], made[0] + 1000))


def test_sequence_never_goes_back_with_the_clock() -> None:
    ids = IdSequence()
    made = [ids.next(t) for t in (1000.0, 2000.0, 1500.0, 10.0, 2000.0, 2000.001)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_sequence_resumes_after_the_last_stored_id() -> None:
    last = (int(5000.0 * 1000) << 20) + 17
    ids = IdSequence(last)
    assert ids.next(10.0) == last + 1
    assert ids.next(6000.0) == int(6000.0 * 1000) << 20


@given(st.lists(st.floats(min_value=0, max_value=4e9, allow_nan=False), min_size=1, max_size=50))
def test_ids_are_unique_and_increasing_whatever_the_clock(times: list[float]) -> None:
    ids = IdSequence()
    made = [ids.next(t) for t in times]
    assert all(a < b for a, b in itertools.pairwise(made))
    texts = [format_id(m) for m in made]
    assert texts == sorted(texts)


def test_id_time_of_bad_id() -> None:
    with pytest.raises(InvalidArgument):
        id_time("nope")


@pytest.mark.parametrize("text", ["8000000000000000", "ffffffffffffffff", "F000000000000000"])
def test_an_id_past_signed_64_bits_is_refused(text: str) -> None:
    """No store can hold it (SQLite and PostgreSQL keys are signed 64-bit):
    a typed error, not an overflow inside the store."""
    with pytest.raises(InvalidArgument, match="7fffffffffffffff"):
        parse_id(text)
