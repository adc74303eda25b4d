"""The strict JSON reader's fast path for ``{"instances": [flat objects]}`` (a predict body)."""

from __future__ import annotations

import orjson
import pytest

from libs.common import jsonbody


def test_an_object_wrapping_flat_records_takes_the_fast_path() -> None:
    body = b'{"instances": [{"a": 1, "b": "x"}, {"a" : 2, "b": "}"}], "routing_key": "k"}'
    assert jsonbody._fast(body, 64) == {"instances": [{"a": 1, "b": "x"}, {"a": 2, "b": "}"}], "routing_key": "k"}


@pytest.mark.parametrize(
    "body",
    [b'{"instances": [{"a": 1, "a": 2}]}', b'{"instances": [{"a": 1}], "instances": [{"a": 1}]}',
     b'{"instances": [{"a" :1, "b": 2}, {"a":1, "a" :2}]}', b'{"instances": [{"a": "{", "a": 1}]}',
     b'{"instances": [{"a": "x\\u0000"}]}'],
)  # fmt: skip
def test_duplicate_keys_and_nul_are_still_refused_in_wrapped_records(body: bytes) -> None:
    with pytest.raises(jsonbody.InvalidJSON):
        jsonbody.loads(body, allow_nan=True)


@pytest.mark.parametrize(
    "body",
    [b'{"instances": [{"a": [1]}]}', b'{"instances": [{"a": {"b": 1}}]}', b'{"p": {"q": 1}, "instances": []}',
     b'{"instances": [1, 2]}'],
)  # fmt: skip
def test_anything_deeper_than_flat_records_is_walked(body: bytes) -> None:
    assert not jsonbody._wrapped_records(body, orjson.loads(body))
    assert jsonbody.loads(body) == orjson.loads(body)


def test_the_depth_limit_still_holds_for_wrapped_records() -> None:
    with pytest.raises(jsonbody.InvalidJSON, match="deeper"):
        jsonbody.loads(b'{"instances": [{"a": 1}]}', max_depth=2)
