"""GET /v1/models/{m}/drift/report on the real stack: a known shift is flagged and drawn, nothing is fetched."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cli.churn_stream import ChurnStream
from libs.common.artifacts import ArtifactStore
from services.monitor.app import create_app
from services.monitor.settings import MonitorSettings
from tests.conftest import Isolation, serve
from tests.factories import promoted, trained_model
from tests.helpers import wait_until
from tests.integration.test_monitor import drift_state, traffic
from tests.integration.test_trainer import publish
from tests.unit.test_drift_report import Page

pytestmark = pytest.mark.integration


async def test_the_report_flags_and_draws_the_shifted_features_and_reaches_nothing(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=2000)
    settings = isolated.settings(MonitorSettings, window_size=300, min_window=100, min_labels=100, label_window=300,
                                 cooldown_s=600)  # fmt: skip
    app, _ = create_app(settings)
    stream = ChurnStream(seed=11)
    async with serve(app) as client:
        unknown = await client.get("/v1/models/nope/drift/report")
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "not_found"
        assert "nope" in unknown.json()["message"]
        assert (await client.get("/v1/models/churn/drift/report?windows=0")).status_code == 422

        await publish(isolated, promoted("churn", 1, model))
        await wait_until(lambda: drift_state(client), message="the monitor to take the reference")
        before = Page()
        before.feed((await client.get("/v1/models/churn/drift/report")).text)
        assert set(before.verdicts.values()) == {"none"}  # the reference alone, no verdict yet

        for i in range(2):
            await publish(isolated, *traffic(model, stream, 300, i * 300))
        stream.drifted = True
        for i in range(2, 5):
            await publish(isolated, *traffic(model, stream, 300, i * 300))
        html = await wait_until(lambda: _report(client), timeout=60, message="5 judged windows and an alarm")
    page = Page()
    page.feed(html)
    drifted = {f for f, v in page.verdicts.items() if v == "true"}
    assert {"monthly_charges", "support_calls", "plan"} <= drifted
    assert page.verdicts["age"] == "false"
    assert page.verdicts["region"] == "false"
    assert page.svgs == len(page.verdicts) + 1  # a chart per feature and the prediction, and the timeline
    assert html.count('<tr class="alarm">') == 1
    assert "data_drift" in html
    windows = re.findall(r'<circle class="(flagged|window)"', html)  # the timeline marks every judged window
    assert len(windows) == 5
    assert windows[-2:] == ["flagged", "flagged"]  # an alarm needs two flagged windows: the last two were
    assert page.links == []
    assert page.scripts == 0
    assert not re.search(r"https?://", html)


async def _report(client: Any) -> str | None:
    """The report page once it shows the 5 judged windows (each stored after it is counted) and an alarm."""
    answer = await client.get("/v1/models/churn/drift/report")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    html: str = answer.text
    return html if len(re.findall(r'<circle class="', html)) == 5 and '<tr class="alarm">' in html else None
