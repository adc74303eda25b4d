"""The web console in a real browser (Debian's headless Chromium, driven by Playwright) on a running stack.

The registry, the trainer and the monitor run as HTTP servers on the session's real broker and
PostgreSQL; the trainer trains version 1 from real data, the registry promotes it, the monitor
judges drifted traffic, and a person clicks through the console as a reader, an approver and an
operator. Screenshots of every page are kept in build/console-screenshots/ (gitignored).

Needs /usr/bin/chromium (``make setup`` installs it as root on Debian; ``.ci/run`` too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from cli.churn_stream import SCHEMA, ChurnStream
from devstack.embedded import free_port
from libs.common import auth, topics
from libs.common.artifacts import ArtifactStore
from libs.common.auth import Role
from libs.common.schema import DatasetSchema
from services.console.app import create_app as console_app
from services.console.settings import ConsoleSettings
from services.monitor.app import create_app as monitor_app
from services.monitor.settings import MonitorSettings
from services.registry.app import create_app as registry_app
from services.registry.settings import RegistrySettings
from services.trainer.app import create_app as trainer_app
from tests.conftest import Isolation
from tests.factories import data_arrived, trained_model
from tests.helpers import send_raw, wait_until
from tests.integration.test_monitor import traffic
from tests.integration.test_registry import trained
from tests.integration.test_trainer import publish
from tests.integration.test_trainer import settings as trainer_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHROMIUM = "/usr/bin/chromium"
GOVERNED = DatasetSchema.model_validate(SCHEMA | {"sensitive": ["region"]})  # live group metrics by region
POISON = b"not an event <b>bold</b>"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SHOTS = Path(__file__).resolve().parents[2] / "build" / "console-screenshots"


@contextlib.asynccontextmanager
async def http_server(app: FastAPI) -> AsyncIterator[str]:
    """``app`` served over real HTTP on a free port of this event loop, with its lifespan; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started or task.done(), timeout=60, message="the server to start")
        assert not task.done(), "the server stopped during start-up"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Stack:
    console: str
    tokens: dict[str, str]
    """Role → a token of a principal holding it (reader 'rita', approver 'ana', operator 'otto')."""


@pytest.fixture
async def running(isolated: Isolation) -> AsyncIterator[Stack]:
    store = ArtifactStore(isolated.artifacts_root)
    registry, _ = registry_app(isolated.settings(RegistrySettings, min_metric=0.6, min_gain=0.01))
    trainer, _ = trainer_app(trainer_settings(isolated, search_iterations=1, time_budget_s=0))  # one fit: fast
    monitor, _ = monitor_app(isolated.settings(MonitorSettings, window_size=300, min_window=100, min_labels=100,
                                               label_window=300, lag_interval_s=1, cooldown_s=600))  # fmt: skip
    async with http_server(registry) as r, http_server(trainer) as t, http_server(monitor) as m:
        db = registry.state.auth.db
        tokens = {role: (await auth.issue(db, name, [Role(role)], created_by="tests")).token
                  for role, name in (("reader", "rita"), ("approver", "ana"), ("operator", "otto"))}  # fmt: skip
        admin = {"Authorization": f"Bearer {(await auth.issue(db, 'seed', [Role.ADMIN], created_by='tests')).token}"}
        async with httpx.AsyncClient(headers=admin, timeout=10) as client:
            # version 1: trained by the trainer from real data, promoted by the registry's policy
            stream = ChurnStream(seed=3)
            batches = [stream.batch(400), stream.batch(400)]
            await publish(isolated, *data_arrived(store, "churn", batches, schema=GOVERNED))
            await wait_until(lambda: _champion(client, r), timeout=150, message="v1 trained and promoted")
            await wait_until(lambda: _monitored(client, m), timeout=30, message="the monitor to take v1")
            # version 2: a weak challenger the policy rejects (an approver may still approve it by hand)
            await publish(isolated, trained(store, 0.55, 0.7, 1))
            await wait_until(lambda: _versions(client, r, 2), timeout=30, message="v2 registered")
            # live traffic: one quiet window, then two drifted ones (an alarm)
            model, live = trained_model(store, rows=800), ChurnStream(seed=11)
            await publish(isolated, *traffic(model, live, 300, 0))
            live.drifted = True
            for i in (1, 2):
                await publish(isolated, *traffic(model, live, 300, i * 300))
            await wait_until(lambda: _alarmed(client, m), timeout=60, message="the drift alarm")
            # a message no consumer can read: the monitor dead-letters it, with the reason
            await send_raw(isolated.kafka.bootstrap, isolated.kafka.topic(topics.LABELS_ARRIVED), POISON)
            await wait_until(lambda: _dead_lettered(client, m), timeout=30, message="the poison dead-lettered")
        settings = ConsoleSettings(registry_url=r, trainer_url=t, monitor_url=m, ingest_url=_closed(),
                                   serving_url=_closed(), session_cache_s=0)  # fmt: skip
        async with http_server(console_app(settings)) as console:
            yield Stack(console, tokens)


def _closed() -> str:
    """An address where nothing listens: the console must say that service is down, not fail."""
    return f"http://127.0.0.1:{free_port()}"


async def _champion(client: httpx.AsyncClient, registry: str) -> bool:
    answer = await client.get(f"{registry}/v1/models")
    return answer.status_code == 200 and any(m["aliases"].get("champion") == 1 for m in answer.json())


async def _versions(client: httpx.AsyncClient, registry: str, n: int) -> bool:
    answer = await client.get(f"{registry}/v1/models/churn/versions")
    return answer.status_code == 200 and len(answer.json()) >= n


async def _monitored(client: httpx.AsyncClient, monitor: str) -> bool:
    return (await client.get(f"{monitor}/v1/models/churn/drift")).status_code == 200


async def _dead_lettered(client: httpx.AsyncClient, monitor: str) -> bool:
    return "driftloop_dlq_messages_total{" in (await client.get(f"{monitor}/metrics")).text


async def _alarmed(client: httpx.AsyncClient, monitor: str) -> bool:
    answer = await client.get(f"{monitor}/v1/models/churn/drift/report")
    return answer.status_code == 200 and '<tr class="alarm">' in answer.text and answer.text.count("<circle") == 3


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[BrowserContext]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - one stat before the browser starts
        pytest.fail(
            f"{CHROMIUM} is missing: `make setup` as root installs Debian's chromium (apt-get install chromium)"
        )
    profile = tempfile.mkdtemp(prefix="driftloop-chromium-")
    try:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1280, "height": 900}
            )
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def sign_in(page: Page, console: str, token: str, then: str = "/models") -> None:
    await page.goto(f"{console}{then}")
    await expect(page).to_have_url(f"{console}/login?next={then}")  # no session: to the sign-in form
    await page.fill("#token", token)
    await page.click("#sign-in")
    await expect(page).to_have_url(f"{console}{then}")


async def test_a_person_reads_the_console_and_acts_only_as_their_role_allows(running: Stack) -> None:
    c = running.console
    async with browser() as context:
        page = await context.new_page()
        await page.goto(f"{c}/login")
        await page.fill("#token", "dl_not-a-token")
        await page.click("#sign-in")
        await expect(page.locator("#login-error")).to_contain_text("not valid")
        await shot(page, "01-login-refused")

        # A reader sees models, versions, aliases, audit, drift and jobs, and is offered no action.
        await sign_in(page, c, running.tokens["reader"])
        cookie = next(k for k in await context.cookies() if k["name"] == "driftloop_session")
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        await expect(page.locator("#principal")).to_have_text("rita")
        row = page.locator('tr.model[data-model="churn"]')
        await expect(row).to_contain_text("champion v1")
        await expect(row).to_contain_text("accuracy")  # the live metric, from the labels
        await shot(page, "02-models")
        await row.locator("a", has_text="churn").click()
        await expect(page.locator("h1")).to_contain_text("churn")
        await expect(page.locator('tr.version[data-version="1"]')).to_contain_text("champion")
        await expect(page.locator('tr.version[data-version="2"]')).to_contain_text("rejected")
        await expect(page.locator('tr.audit[data-action="reject"]')).to_have_count(1)
        await expect(page.locator('tr.audit[data-action="promote"]')).to_contain_text("policy")
        await expect(page.locator("#drift")).to_contain_text("flagged")
        await expect(page.locator("tr.job")).to_have_count(1)
        await expect(page.locator("tr.job")).to_contain_text("succeeded")
        await expect(page.locator("form.action")).to_have_count(0)
        # live group metrics by region from the monitor's labels, beside the champion's holdout figure
        live_dp = page.locator('tr.live-difference[data-key="demographic_parity_difference:region"]')
        await expect(live_dp).to_be_visible()
        assert "–" not in await live_dp.locator("td").nth(2).inner_text()  # the trainer measured v1's holdout
        await expect(page.locator('table.live-groups[data-feature="region"] tr.live-group')).to_have_count(4)
        await shot(page, "03-model-as-reader")
        await expect(page.locator('tr.version[data-version="1"] a.card-link')).to_be_visible()
        await page.click('tr.version[data-version="1"] >> text=v1')
        await expect(page.locator("#decision")).to_have_text("promoted")
        await expect(page.locator("#lineage")).to_contain_text("churn version 2")  # the dataset version it learnt
        await expect(page.locator("#schema")).to_contain_text("monthly_charges")
        # the cards the trainer made for v1, as the registry renders them (with its alias trail)
        await expect(page.locator("#model-card")).to_contain_text("Model card: v1 of")
        await expect(page.locator("#model-card")).to_contain_text("champion")
        await expect(page.locator("#data-card")).to_contain_text("monthly_charges")
        await shot(page, "03b-version")
        await page.go_back()
        await page.click("#drift-report")
        drifted = page.locator('section.feature[data-drifted="true"]')
        await expect(drifted.first).to_be_visible()
        flagged = await drifted.evaluate_all("(s) => s.map((e) => e.dataset.feature)")
        assert "monthly_charges" in flagged
        assert "age" not in flagged
        await expect(page.locator("tr.alarm")).to_have_count(1)
        await shot(page, "04-drift-report")
        await page.click("text=in the console")
        await page.click("text=Training jobs")
        await expect(page.locator("tr.job")).to_have_count(1)
        await page.click("text=Operations")
        await expect(page.locator("tr.lag").first).to_be_visible()  # the monitor's lag measurement
        await expect(page.locator("tr.dead-letter")).to_contain_text("labels.arrived")  # counted
        letter = page.locator("table.letters tr.letter").first  # the latest dead letters, each with its reason
        await expect(letter).to_contain_text("labels.arrived")
        await expect(letter.locator("td.reason")).not_to_be_empty()
        await expect(letter.locator("code.preview")).to_have_text(POISON.decode())  # shown as text, not markup
        await expect(page.locator("p.error")).to_contain_text("ingest, serving")  # not running here
        await shot(page, "05-operations")
        answer = await page.goto(f"{c}/models/nope")
        assert answer is not None
        assert answer.status == 404
        await expect(page.locator("#error")).to_contain_text("no model 'nope'")
        await shot(page, "06-unknown-model")
        await page.click("text=Sign out")
        await expect(page).to_have_url(f"{c}/login")

        # An approver approves the rejected v2 as champion, with a reason that lands in the audit.
        await sign_in(page, c, running.tokens["approver"], then="/models/churn")
        await expect(page.locator("form.action")).to_have_count(1)  # rollback and canary are the operator's
        approve = page.locator('tr.version[data-version="2"] form[data-kind="approve"]')
        await approve.locator('input[name="reason"]').fill("reviewed the holdout by hand")
        await approve.locator("button").click()
        await expect(page.locator("#done")).to_contain_text("champion is now version 2")
        await expect(page.locator('tr.version[data-version="2"]')).to_contain_text("champion")
        await expect(page.locator("tr.audit").first).to_contain_text("ana")
        await expect(page.locator("tr.audit").first).to_contain_text("reviewed the holdout by hand")
        await shot(page, "07-approved")
        await page.click("text=Sign out")

        # An operator rolls back; approving is not theirs.
        await sign_in(page, c, running.tokens["operator"], then="/models/churn")
        await expect(page.locator('form[data-kind="approve"]')).to_have_count(0)
        rollback = page.locator('tr.version[data-version="1"] form[data-kind="rollback"]')
        await rollback.locator('input[name="reason"]').fill("v2 too weak after all")
        await rollback.locator("button").click()
        await expect(page.locator("#done")).to_contain_text("rollback: champion is now version 1")
        first = page.locator("tr.audit").first
        await expect(first).to_have_attribute("data-action", "rollback")
        await expect(first).to_contain_text("otto")
        await shot(page, "08-rolled-back")
        canary = page.locator('tr.version[data-version="2"] form[data-alias="canary"][data-kind="promote"]')
        await canary.locator('input[name="reason"]').fill("try v2 on a quarter of the traffic")
        await canary.locator('input[name="share"]').fill("25")
        await canary.locator("button").click()
        await expect(page.locator("#done")).to_contain_text("canary is now version 2")
        end = page.locator('tr.version[data-version="2"] form[data-kind="end"]')
        await page.click("text=Models")
        await expect(page.locator('tr.model[data-model="churn"]')).to_contain_text("canary at 25 %")
        await page.go_back()
        await end.locator('input[name="reason"]').fill("enough seen")
        await end.locator("button").click()
        await expect(page.locator("#done")).to_contain_text("the canary is ended")
        await expect(page.locator('tr.version[data-version="2"] span.badge.canary')).to_have_count(0)
        await shot(page, "09-canary-ended")
        session = next(k for k in await context.cookies() if k["name"] == "driftloop_session")["value"]

    # The same POST without the form's CSRF value, or from another site, changes nothing.
    form = {"version": "2", "reason": "forged"}
    async with httpx.AsyncClient(base_url=c, cookies={"driftloop_session": session}) as client:
        no_csrf = await client.post("/models/churn/aliases/canary", data=form, headers={"Origin": c})
        assert no_csrf.status_code == 403
        assert "CSRF" in no_csrf.text
        elsewhere = await client.post(
            "/models/churn/aliases/canary", data=form, headers={"Origin": "https://x.example"}
        )
        assert elsewhere.status_code == 403
        page_html = (await client.get("/models/churn")).text
        assert "forged" not in page_html
        assert "canary v2" not in page_html
    assert os.listdir(SHOTS)
