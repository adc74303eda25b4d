"""The console's answers when nothing stands behind it: sign-in, redirects, origin checks, and pages
that say what is wrong (a service down is a 502 page naming it, an unknown page a 404), never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from devstack.embedded import free_port
from services.console.app import create_app
from services.console.settings import ConsoleSettings

BASE = "http://console.test"


@pytest.fixture
async def console() -> AsyncIterator[httpx.AsyncClient]:
    def closed() -> str:  # an address where nothing listens
        return f"http://127.0.0.1:{free_port()}"

    settings = ConsoleSettings(ingest_url=closed(), trainer_url=closed(), registry_url=closed(),
                               serving_url=closed(), monitor_url=closed(), request_timeout_s=2)  # fmt: skip
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client,
    ):
        yield client


async def test_pages_need_a_session_and_send_the_browser_to_sign_in(console: httpx.AsyncClient) -> None:
    for path in ("/models", "/models/churn", "/jobs", "/ops"):
        answer = await console.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/login?next={path}"
    form = await console.get("/login?next=//evil.example/steal")
    assert form.status_code == 200
    assert 'name="next" value="/models"' in form.text  # never back to another site
    assert "default-src 'none'" in form.headers["content-security-policy"]
    assert form.headers["x-content-type-options"] == "nosniff"


async def test_a_sign_in_from_another_site_is_refused(console: httpx.AsyncClient) -> None:
    for headers in ({"Origin": "https://evil.example"}, {}):
        answer = await console.post("/login", data={"token": "dl_x"}, headers=headers)
        assert answer.status_code == 403
        assert "another site" in answer.text
        assert "set-cookie" not in answer.headers


async def test_a_service_that_does_not_answer_is_named_on_a_502_page(console: httpx.AsyncClient) -> None:
    answer = await console.post("/login", data={"token": "dl_x", "next": "/models"}, headers={"Origin": BASE})
    assert answer.status_code == 502
    assert "the registry service does not answer" in answer.text
    assert "set-cookie" not in answer.headers
    ready = await console.get("/readyz")
    assert ready.status_code == 503
    assert (await console.get("/healthz")).json() == {"status": "ok", "service": "console"}


async def test_an_unknown_page_is_a_readable_404(console: httpx.AsyncClient) -> None:
    answer = await console.get("/no/such/page")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
    assert "there is no page /no/such/page" in answer.text
    assert (await console.get("/docs")).status_code == 404  # no OpenAPI UI: it is not an API
