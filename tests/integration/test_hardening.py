"""Bad input on the real services: every answer a 4xx in the platform's error shape,
nothing stored, and the event loop free while large bodies are parsed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.registry.app import create_app as registry_app
from services.registry.settings import RegistrySettings
from tests.conftest import Isolation, serve
from tests.integration.test_ingest import SCHEMA, _row

pytestmark = pytest.mark.integration


def assert_error(answer: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """A ``status`` answer in the platform's shape ({"error", "message"}) mentioning ``words``."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) >= {"error", "message"}, body
    assert "detail" not in body, body
    for word in words:
        assert word in body["message"], body
    return dict(body)


async def test_ingest_refuses_what_it_could_not_store(isolated: Isolation) -> None:
    app, runtime = ingest_app(isolated.settings(IngestSettings))
    async with serve(app) as client:
        assert (await client.put("/v1/datasets/customers", json=SCHEMA)).status_code == 201
        post = "/v1/datasets/customers/records"
        json_type = {"content-type": "application/json"}
        bad_bodies = {
            "NUL": json.dumps([_row(plan="ba\x00sic")]),
            "surrogate": '[{"age": 30, "plan": "\\ud800", "visits": 1, "churned": "no"}]',
            "nested": "[" * 10_000 + "]" * 10_000,
            "duplicate key": '[{"age": 30, "age": 31, "plan": "basic", "visits": 1, "churned": "no"}]',
        }
        for why, body in bad_bodies.items():
            answer = await client.post(post, content=body, headers=json_type)
            assert_error(answer, 400), why
        csv = "age,plan,age,visits,churned\n30,basic,31,1,no\n"
        assert_error(await client.post(post, content=csv, headers={"content-type": "text/csv"}), 400, "repeats")
        huge = await client.post(post, json=[_row(visits=2**70), _row(age=10**400)])
        assert huge.status_code == 200, huge.text  # out-of-range numbers are rejected rows, not a 500
        assert huge.json()["accepted"] == 0
        assert {r["field"] for r in huge.json()["rejections"]} == {"visits", "age"}

        nan_bound = '{"features": [{"name": "x", "dtype": "numeric", "min": NaN}], "target": ' \
                    '{"name": "y", "dtype": "numeric"}, "task": "regression"}'  # fmt: skip
        assert_error(await client.put("/v1/datasets/nan", content=nan_bound, headers=json_type), 422, "finite")
        infinite = {"features": [{"name": "x", "dtype": "numeric", "max": 1e999}],
                    "target": {"name": "y", "dtype": "numeric"}, "task": "regression"}  # fmt: skip
        assert_error(
            await client.put("/v1/datasets/inf", content=json.dumps(infinite), headers=json_type), 422, "finite"
        )
        assert_error(await client.get("/v1/datasets/customers/versions/2147483648"), 422, "version")
        assert_error(await client.get(f"/v1/datasets/customers/rejections?before_id={2**63}"), 422, "before_id")
        assert_error(await client.get("/v1/datasets/customers/rejections?limit=1%00"), 400, "NUL")
        assert_error(await client.get("/v1/nowhere"), 404)
        assert_error(await client.delete("/v1/datasets/customers"), 405)
        shown = (await client.get("/v1/datasets/customers")).json()
        assert shown["records"]["received"] == 2  # only the out-of-range rows were counted
        assert shown["version"] == 0
        assert await runtime.db.fetchval("SELECT count(*) FROM datasets") == 1


async def test_registry_refuses_out_of_range_versions(isolated: Isolation) -> None:
    app, _ = registry_app(isolated.settings(RegistrySettings))
    async with serve(app) as client:
        assert_error(await client.get("/v1/models/churn/versions/2147483648"), 422)
        move = {"version": 2**31, "reason": "roll back"}
        assert_error(await client.put("/v1/models/churn/aliases/champion", json=move), 422, "version")
        assert_error(await client.get("/v1/models/ch%00urn/versions"), 400, "NUL")


async def test_a_wide_schema_is_checked_without_blocking_the_loop(isolated: Isolation) -> None:
    """200,000 features used to take 18 minutes of event loop (a quadratic uniqueness check)."""
    features = [{"name": f"f{i}", "dtype": "numeric"} for i in range(200_000)]
    wide = {"features": features, "target": {"name": "y", "dtype": "numeric"}, "task": "regression"}
    app, _ = ingest_app(isolated.settings(IngestSettings, max_body_bytes=20 * 1024 * 1024))
    async with serve(app) as client:
        stalls: list[float] = []  # how late the loop ran a 20 ms sleep, plus a /healthz answer
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await asyncio.sleep(0.02)
                assert (await client.get("/healthz")).status_code == 200
                stalls.append(time.perf_counter() - started - 0.02)

        body = json.dumps(wide).encode()  # encoded before probing: the client shares the test's loop
        prober = asyncio.create_task(probe())
        started = time.perf_counter()
        answer = await client.put("/v1/datasets/wide", content=body, headers={"content-type": "application/json"})
        took = time.perf_counter() - started
        done.set()
        await prober
        assert answer.status_code == 201, answer.text[:300]
        repeated = {**wide, "features": [*features, {"name": "f7", "dtype": "numeric"}]}
        assert_error(await client.put("/v1/datasets/wide2", json=repeated), 422, "f7")
        assert took < 60, took
        # what remains is pydantic's own parse and dump, which hold the GIL even on a worker thread
        assert max(stalls) < 2.0, f"the event loop stalled {max(stalls):.2f}s"
        print(f"200,000-feature schema declared in {took:.1f}s; /healthz worst {max(stalls) * 1000:.0f} ms")


class TcpProxy:
    """A TCP relay to PostgreSQL that a test can cut and restore: an outage without
    stopping the database every other test shares."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.pipes: set[asyncio.StreamWriter] = set()
        self.relays: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.pipes):
            writer.transport.abort()
        self.pipes.clear()
        await self.server.wait_closed()
        await asyncio.gather(*self.relays, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.relays.add(task)
        task.add_done_callback(self.relays.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def test_a_database_outage_answers_503_with_retry_after(isolated: Isolation) -> None:
    url = urlsplit(isolated.database.url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    via_proxy = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
    proxied = isolated.database.model_copy(update={"url": via_proxy})
    app, _ = ingest_app(isolated.settings(IngestSettings, database=proxied))
    async with serve(app) as client:
        assert (await client.put("/v1/datasets/customers", json=SCHEMA)).status_code == 201
        await proxy.cut()
        answer = await client.post("/v1/datasets/customers/records", json=[_row()])
        assert_error(answer, 503, "unavailable")
        assert int(answer.headers["retry-after"]) > 0
        assert (await client.get("/readyz")).status_code == 503
        await proxy.start()  # the database is back: the same pool recovers, no restart
        answer = await wait_until_ok(lambda: client.post("/v1/datasets/customers/records", json=[_row()]))
        assert answer.json()["version"] == 1
    await proxy.cut()


async def wait_until_ok(call: Any, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer: httpx.Response = await call()
        if answer.status_code < 500 or time.monotonic() > deadline:
            assert answer.status_code == 200, answer.text
            return answer
        await asyncio.sleep(0.2)
