"""Sending a file's chunks to ingest one request at a time, and what the post did.

A 429 is waited out for as long as its ``Retry-After`` says, as often as it comes (the rate
limit lets a request through once its bucket refills); a lost connection or a 502/503/504 is
retried a few times with backoff. Both are safe because every chunk carries its
``Idempotency-Key``: a request that was stored before its answer was lost is answered again
from the first time. Any other refusal stops the post.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from rich.console import Console
from rich.markup import escape

from cli import upload
from cli.service_http import message
from cli.upload import Chunk
from libs.common.idempotency import HEADER, REPLAYED_HEADER
from libs.common.retry import Backoff

T = TypeVar("T")
console = Console(stderr=True)
TRANSIENT = (502, 503, 504)
RETRIES = 5
"""Tries after a lost connection or a transient status, waiting 1, 2, 4, 8 and 16 s (or Retry-After)."""
LISTED = 100
"""Rejected rows a summary lists (ingest's answers list the first 100 of each request)."""
_HINTS = {
    404: "declare the dataset first: driftloop datasets declare NAME SCHEMA.json",
    409: "this file went to this dataset before with other settings (--mode, --format, --rows-per-request, "
    "--max-bytes): post it with the same ones to resume, or give --key to store its rows again",
    413: "ingest takes smaller bodies: lower --max-bytes (its DRIFTLOOP_INGEST_MAX_BODY_BYTES)",
}


class Refused(Exception):
    """Ingest refused a chunk (or could not be reached): the post stops there."""

    def __init__(self, chunk: Chunk, status: int | None, why: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(why)
        self.chunk, self.status, self.why, self.details = chunk, status, why, details or {}

    def describe(self) -> dict[str, Any]:
        """The refusal for the summary: which chunk, its file rows, the status and ingest's message."""
        c = self.chunk
        where = f"chunk {c.index} (file rows {c.first_row:,}-{c.first_row + c.rows - 1:,})"
        said = f"{self.status} {self.why}" if self.status else self.why
        if isinstance(self.details.get("row"), int):  # a strict refusal names the chunk's row
            said += f" (row {self.details['row']} of the chunk is the file's row {c.first_row + self.details['row']:,})"
        verb = "refused" if self.status else "not sent"
        return {"chunk": c.index, "first_row": c.first_row, "rows": c.rows, "status": self.status,
                "error": self.details.get("error"), "message": f"{where} {verb}: {said}",
                "hint": _HINTS.get(self.status or 0)}  # fmt: skip


def post_file(
    http: httpx.Client, dataset: str, file: Path, fmt: str, *, mode: str, max_rows: int, max_bytes: int,
    key: str | None, progress: bool,
) -> Summary:  # fmt: skip
    """Post the file's chunks in order, until the last or the first refusal (kept in the summary's
    ``error``). Keys are ``key``-N, or made from the file's digest and the dataset."""
    started = time.monotonic()
    prefix = key or upload.key_prefix(dataset, upload.file_digest(file))
    summary = Summary(dataset=dataset, file=str(file), format=fmt)
    try:
        for chunk in ahead(upload.chunks(file, fmt, max_rows=max_rows, max_bytes=max_bytes)):
            response, throttled = send_chunk(http, dataset, chunk, upload.idempotency_key(prefix, chunk.index), mode)
            summary.add(chunk, response.json(), replayed=response.headers.get(REPLAYED_HEADER) == "true",
                        throttled_s=throttled)  # fmt: skip
            if progress:
                console.print(f"  {summary.requests} requests, {summary.rows:,} rows", end="\r")
    except (upload.Unreadable, Refused) as exc:
        summary.error = exc.describe() if isinstance(exc, Refused) else {"message": str(exc)}
    except KeyboardInterrupt:
        summary.error = {
            "message": f"interrupted after {summary.requests} requests",
            "hint": "post the same file again to send the rest: what was stored is not stored twice",
        }
    summary.seconds = time.monotonic() - started
    return summary


def send_chunk(http: httpx.Client, dataset: str, chunk: Chunk, key: str, mode: str) -> tuple[httpx.Response, float]:
    """Post ``chunk`` until it is answered: the success, and the seconds spent waiting out 429s."""
    throttled, failures, backoff = 0.0, 0, Backoff(1.0, 16.0).delays()
    while True:
        response, why = _post(http, dataset, chunk, key, mode)
        if response is not None and response.is_success:
            return response, throttled
        if response is not None and response.status_code == 429:
            wait = _retry_after(response, 1.0)
            throttled += wait
            time.sleep(wait)
            continue
        if response is not None and response.status_code not in TRANSIENT:
            raise Refused(chunk, response.status_code, message(response), _details(response))
        failures += 1
        if failures > RETRIES:
            raise Refused(chunk, response.status_code if response is not None else None, why)
        wait = next(backoff)
        wait = _retry_after(response, wait) if response is not None else wait
        console.print(f"[yellow]chunk {chunk.index}: {escape(why)}; trying again in {wait:g}s[/]")
        time.sleep(wait)


def _post(http: httpx.Client, dataset: str, chunk: Chunk, key: str, mode: str) -> tuple[httpx.Response | None, str]:
    """One try: the answer (None when there was none) and what went wrong, if anything."""
    headers = {"content-type": chunk.content_type, HEADER: key}
    try:
        response = http.post(f"/v1/datasets/{dataset}/records", params={"mode": mode}, content=chunk.body,
                             headers=headers)  # fmt: skip
    except httpx.TransportError as exc:
        why = f"ingest not reachable at {http.base_url}: {str(exc) or type(exc).__name__}"
        if chunk.index == 0 and isinstance(exc, httpx.ConnectError):  # not running there: say so at once
            raise Refused(chunk, None, why) from exc
        return None, why
    return response, f"{response.status_code} {message(response)}"


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", default)))
    except ValueError:  # an HTTP date: not what driftloop sends
        return default


def _details(response: httpx.Response) -> dict[str, Any]:
    """A refusal's error code and details (``{"error", "message", "details": {...}}``)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    details = body.get("details")
    return {"error": body.get("error"), **(details if isinstance(details, dict) else {})}


def ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, the next one made on a thread while the caller works on the current one (so the
    next chunk is read and compressed while the current request is in flight)."""
    end: Any = object()
    with ThreadPoolExecutor(1, thread_name_prefix="next-chunk") as pool:
        coming = pool.submit(next, items, end)
        while (item := coming.result()) is not end:
            coming = pool.submit(next, items, end)
            yield item


@dataclass
class Summary:
    """What a post did: requests, rows stored or rejected now, what earlier posts had stored, versions."""

    dataset: str
    file: str
    format: str
    requests: int = 0
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    versions: list[int] = field(default_factory=list)
    """Dataset versions this post made."""
    replayed: dict[str, int] = field(default_factory=lambda: {"requests": 0, "accepted": 0, "rejected": 0})
    """Requests an earlier post had stored: answered again, nothing stored."""
    rejections: list[dict[str, Any]] = field(default_factory=list)
    """The first rejected rows, numbered as in the file."""
    throttled_s: float = 0.0
    seconds: float = 0.0
    error: dict[str, Any] | None = None

    def add(self, chunk: Chunk, answer: dict[str, Any], *, replayed: bool, throttled_s: float) -> None:
        self.requests += 1
        self.rows += chunk.rows
        self.throttled_s += throttled_s
        if replayed:
            for counted in ("requests", "accepted", "rejected"):
                self.replayed[counted] += 1 if counted == "requests" else answer[counted]
        else:
            self.accepted += answer["accepted"]
            self.rejected += answer["rejected"]
            if answer["version"] is not None:
                self.versions.append(answer["version"])
        room = LISTED - len(self.rejections)
        self.rejections += [{**r, "row": chunk.first_row + r["row"], "chunk": chunk.index}
                            for r in answer["rejections"][:room]]  # fmt: skip

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}

    def lines(self) -> list[tuple[str, str]]:
        """The summary as (what, figure) lines for a table."""
        out = [("requests", f"{self.requests:,} ({self.format}, {self.rows:,} rows)"),
               ("stored now", f"{self.accepted:,} rows accepted, {self.rejected:,} rejected"),
               ("versions", _span(self.versions)),
               ("time", f"{self.seconds:.1f} s, {self.rows_per_s:,.0f} rows/s")]  # fmt: skip
        if self.replayed["requests"]:
            out.insert(2, ("stored before", f"{self.replayed['requests']:,} requests already posted "
                           f"({self.replayed['accepted']:,} accepted, {self.replayed['rejected']:,} rejected): "
                           "nothing stored again"))  # fmt: skip
        if self.throttled_s:
            out.append(("rate-limited", f"{self.throttled_s:.1f} s waited (429 Retry-After)"))
        return out


def _span(versions: list[int]) -> str:
    if not versions:
        return "none made"
    if len(versions) == 1:
        return str(versions[0])
    return f"{versions[0]}-{versions[-1]} ({len(versions)} new)"
