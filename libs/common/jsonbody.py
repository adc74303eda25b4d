"""Strict JSON for request bodies: what the standard library accepts but the
platform must not.

``json.loads`` lets through four things that later turn into a 500 or a
silent loss: a duplicate key (the last value wins without a word), ``NaN`` and
``Infinity`` (not JSON at all; a schema bound of ``NaN`` used to be stored as
"no bound"), a string holding a NUL character or a lone UTF-16 surrogate
(PostgreSQL and UTF-8 refuse both, deep inside a transaction), and nesting so
deep that the decoder overflows the stack. :func:`loads` refuses each of them
with a :class:`BadRequest` that says what and where, so the answer is a 400.

Parsing a large body takes milliseconds to seconds; :func:`loads_off_loop`
runs it on a worker thread so the event loop keeps answering ``/healthz``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import orjson

from libs.common.errors import BadRequest

P = ParamSpec("P")
T = TypeVar("T")

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects a request may use (driftloop's own bodies need 4)."""
OFF_LOOP_BYTES = 64 * 1024
"""Bodies larger than this are parsed on a worker thread."""


class InvalidJSON(BadRequest):
    code = "invalid_json"


class _Refused(ValueError):
    """Raised from inside the decoder's hooks; becomes :class:`InvalidJSON`."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {key!r} in a JSON object")
            seen.add(key)

    return obj


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON value; send null for a missing number")


def check_text(text: str, where: str = "a string") -> None:
    """Refuse a NUL character or a lone surrogate: no database or UTF-8 encoder accepts them."""
    if "\x00" in text:
        raise InvalidJSON(f"{where} holds a NUL character (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJSON(f"{where} holds a lone UTF-16 surrogate ({text[exc.start]!r})") from exc


def loads(data: bytes | str, *, allow_nan: bool = False, max_depth: int = MAX_DEPTH) -> Any:
    """The document in ``data``, or :class:`InvalidJSON` naming what is wrong with it.

    ``allow_nan`` keeps ``NaN``/``Infinity`` for callers that judge them per
    value (ingest rejects the row, not the request).
    """
    if isinstance(data, bytes):
        fast = _fast(data, max_depth)
        if fast is not _UNSURE:
            return fast
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"body is not UTF-8: {exc}") from exc
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=None if allow_nan else _no_constant)
    except RecursionError as exc:
        raise InvalidJSON(f"JSON nested deeper than {max_depth} levels") from exc
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"body is not valid JSON: {exc}") from exc
    except _Refused as exc:
        raise InvalidJSON(str(exc)) from exc
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise InvalidJSON(f"body holds a number too long to read: {exc}") from exc
    # Escapes are the only way a NUL or a lone surrogate gets into a decoded
    # string (raw control characters are invalid JSON, raw surrogates invalid
    # UTF-8), so strings need checking only when the text has a \u escape.
    _walk(doc, max_depth, strings="\\u" in text)
    return doc


_UNSURE: Any = object()
_KEY = re.compile(rb'"\s*:')
"""The end of an object key: every key has one, so the text holds at least as many as the document has keys."""


def _fast(data: bytes, max_depth: int) -> Any:
    """The document, parsed by orjson, when nothing :func:`loads` refuses can be in it; else ``_UNSURE``.

    orjson refuses invalid UTF-8, lone surrogates, ``NaN`` and ``Infinity`` itself (those bodies
    take the strict path, which says why or, with ``allow_nan``, keeps them). What it accepts
    silently is checked here: a NUL can only arrive as the escape ``\\u0000``; a duplicate key
    leaves the document with fewer keys than the text has key endings (a string holding ``":``
    only makes that count larger, never hides a duplicate); depth is measured while counting.
    Parsing this way costs about a tenth of the strict decoder on request-sized bodies.
    """
    if b"\\u0000" in data:
        return _UNSURE
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _UNSURE
    if _flat_records(data, doc):  # the common body, a list of flat objects: counted in C
        keys = sum(map(len, doc))
        return doc if not keys or _key_endings(data) == keys else _UNSURE
    if max_depth >= 3 and _wrapped_records(data, doc):  # {"instances": [flat objects], ...}: the same, one level down
        keys = len(doc) + sum(sum(map(len, v)) for v in doc.values() if type(v) is list)
        return doc if _key_endings(data) == keys else _UNSURE
    keys = 0
    stack: list[tuple[Any, int]] = [(doc, 1)] if isinstance(doc, dict | list) else []
    while stack:  # orjson makes exact dicts and lists: type() is about twice as fast as isinstance() here
        value, depth = stack.pop()
        if depth > max_depth:
            return _UNSURE
        if type(value) is dict:
            keys += len(value)
            value = value.values()
        for item in value:
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, depth + 1))
    if keys and _key_endings(data) != keys:
        return _UNSURE
    return doc


def _flat_records(data: bytes, doc: Any) -> bool:
    """Whether ``doc`` is a list of objects none of whose values is an array or object (so its depth is 2).

    The text holds at least one bracket per container (strings may add more), so when it holds
    exactly one per record plus the list's own, no record can hold a container.
    """
    return (
        type(doc) is list
        and data.count(b"{") + data.count(b"[") == len(doc) + 1
        and all(type(item) is dict for item in doc)
    )


def _wrapped_records(data: bytes, doc: Any) -> bool:
    """Whether ``doc`` is an object whose values are scalars or lists of objects none of whose values is
    an array or object (so its depth is 3), by the bracket count of :func:`_flat_records`."""
    if type(doc) is not dict:
        return False
    containers = 1
    for value in doc.values():
        if type(value) is list:
            if not all(type(item) is dict for item in value):
                return False
            containers += 1 + len(value)
        elif type(value) is dict:
            return False
    return data.count(b"{") + data.count(b"[") == containers


_SPACED_KEY = re.compile(rb'"\s+:')


def _key_endings(data: bytes) -> int:
    """How many times ``"`` followed by optional whitespace and ``:`` occurs in ``data``."""
    tight = data.count(b'":')
    if data.count(b":") == tight:  # every colon follows a quote: none follows whitespace (counted in C)
        return tight
    if _SPACED_KEY.search(data) is None:
        return tight
    return sum(1 for _ in _KEY.finditer(data))


def _walk(doc: Any, max_depth: int, *, strings: bool) -> None:
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                raise InvalidJSON(f"JSON nested deeper than {max_depth} levels")
            for key, item in value.items():
                if strings:
                    check_text(key, f"the key {key[:40]!r}")
                if isinstance(item, dict | list) or (strings and isinstance(item, str)):
                    stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > max_depth:
                raise InvalidJSON(f"JSON nested deeper than {max_depth} levels")
            kinds = (dict, list, str) if strings else (dict, list)
            stack.extend((item, depth + 1) for item in value if isinstance(item, kinds))
        elif strings and isinstance(value, str):
            check_text(value, f"the string {value[:40]!r}")


async def off_loop(size: int, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``func(*args, **kwargs)``, on a worker thread when ``size`` (bytes of input) is
    over :data:`OFF_LOOP_BYTES`: small inputs are not worth a thread hop."""
    if size <= OFF_LOOP_BYTES:
        return func(*args, **kwargs)
    return await asyncio.to_thread(func, *args, **kwargs)


async def loads_off_loop(data: bytes, *, allow_nan: bool = False) -> Any:
    """:func:`loads`, on a worker thread when ``data`` is large."""
    return await off_loop(len(data), loads, data, allow_nan=allow_nan)
