"""decode_json and json_rows use orjson, with the json module's results."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vocoeng import pg_bulk, routing
from vocoeng.routing import PermanentMessageError, decode_json


def json_module(raw: bytes) -> tuple[str, object]:
    """What decode_json gave before orjson: the json module's value or reason."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            parse_constant=routing._json_constant,
            parse_float=routing._json_float,
        )
    except (ValueError, RecursionError) as exc:
        return "error", type(exc).__name__
    if "\\u0000" in text:
        value = routing.nul_replace(value)
    return "ok", value


def decoded(raw: bytes) -> tuple[str, object]:
    try:
        return "ok", decode_json(raw)
    except PermanentMessageError:
        return "error", None


def same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0 here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(values, st.booleans())
def test_any_json_value_decodes_to_what_the_json_module_reads(value, ascii_only):
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    expected, got = json_module(raw), decoded(raw)
    assert expected[0] == got[0]
    if got[0] == "ok":
        assert same(got[1], expected[1])


@pytest.mark.parametrize(
    "raw",
    [
        b"[12345678901234567890123]",  # beyond 64 bits: orjson would give a float
        b"[18446744073709551616]",
        b'{"user_id": 99999999999999999999}',
        b"[0.12345678901234567890123]",
        b'"\\ud800"',  # a lone surrogate: orjson refuses, the json module reads it
        b'{"a": "x\\u0000y"}',
        b"[1e400]",
        b"NaN",
        b"\xef\xbb\xbf{}",
        b'{"a": "line\nbreak"}',
        b"[1,]",
        b"\xff",
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_edge_bodies_decode_or_fail_as_with_the_json_module(raw: bytes) -> None:
    expected, got = json_module(raw), decoded(raw)
    assert expected[0] == got[0]
    if got[0] == "ok":
        assert same(got[1], expected[1])


def test_a_long_integer_stays_exact() -> None:
    assert decode_json(b'{"n": 123456789012345678901234567890}') == {
        "n": 123456789012345678901234567890
    }


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(), st.integers(-(2**70), 2**70), values)))
def test_json_rows_reads_back_as_the_rows(rows):
    assert json.loads(pg_bulk.json_rows(rows)) == json.loads(
        json.dumps([list(r) for r in rows])
    )
    assert json.loads(pg_bulk.json_rows(iter(rows))) == [list(r) for r in rows]
