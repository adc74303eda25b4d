"""The drift report page on a known shift: what is drawn and flagged, and that it reaches nothing outside."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest

from libs.common.profile import ReferenceProfile, build_profile
from libs.common.schema import DatasetSchema
from services.monitor.adapters.repository import StoredReport
from services.monitor.domain.decision import DriftConfig, evaluate_window
from services.monitor.domain.histograms import window_histograms
from services.monitor.domain.monitor import ModelMonitor
from services.monitor.domain.windows import Window
from services.monitor.report.render import render

KINDS: dict[str, Any] = {"amount": "numeric", "tenure": "numeric", "plan": "categorical"}
SCHEMA = DatasetSchema.model_validate({
    "features": [{"name": "amount", "dtype": "numeric"}, {"name": "tenure", "dtype": "numeric"},
                 {"name": "plan", "dtype": "categorical", "categories": ["basic", "pro", "<b>vip</b>"]}],
    "target": {"name": "y", "dtype": "categorical", "categories": ["no", "yes"]}, "task": "classification",
})  # fmt: skip
PLANS = ["basic", "pro", "<b>vip</b>"]  # a category name with markup: the report must escape it


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(3)
    n = 4000
    columns = {"amount": rng.normal(50, 10, n), "tenure": rng.exponential(12, n), "plan": rng.choice(PLANS, n)}
    return build_profile(columns, KINDS, rng.choice(["no", "yes"], n), prediction_kind="categorical",
                         metrics={"accuracy": 0.8})  # fmt: skip


def judged(profile: ReferenceProfile, seed: int, shift: float, at: datetime) -> StoredReport:
    """A window whose ``amount`` moved by ``shift``, judged and stored as the monitor does."""
    rng = np.random.default_rng(100 + seed)
    n = 600
    window = Window(profile, seed=seed)
    columns = {"amount": rng.normal(50 + shift, 10, n), "tenure": rng.exponential(12, n), "plan": rng.choice(PLANS, n)}
    window.add_columns(columns, rng.choice(["no", "yes"], n))
    report = evaluate_window(window, None, DriftConfig())
    return StoredReport(at, 1, report.flagged, {**report.to_dict(), "histograms": window_histograms(window)})


class Page(HTMLParser):
    """What a reader of the page sees: feature sections with their verdicts, and every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.verdicts: dict[str, str] = {}
        self.links: list[str] = []
        self.svgs = 0
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("data-feature"):
            self.verdicts[str(a["data-feature"])] = str(a["data-drifted"])
        self.links += [str(v) for k, v in attrs if k in ("src", "href", "xlink:href", "action", "srcset") and v]
        self.svgs += tag == "svg"
        self.scripts += tag == "script"


def monitor(profile: ReferenceProfile) -> ModelMonitor:
    return ModelMonitor("credit", 1, profile, SCHEMA, "credit", DriftConfig(), 600, 300, 2000)


def test_a_shifted_feature_is_flagged_and_drawn_and_the_others_are_not(profile: ReferenceProfile) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    reports = [judged(profile, 1, 0.0, t0), judged(profile, 2, 8.0, t0 + timedelta(minutes=1))]
    alarm = {"event_id": "e1", "version": 1, "kinds": ["data_drift"], "summary": "amount moved",
             "at": reports[1].at.isoformat()}  # fmt: skip
    html = render(monitor(profile), reports, [alarm])

    page = Page()
    page.feed(html)
    assert page.verdicts == {"amount": "true", "tenure": "false", "plan": "false", "prediction": "false"}
    assert page.svgs == 5  # one per feature, the prediction, and the timeline
    assert 'id="verdict"' in html
    assert 'data-flagged="true"' in html
    assert "amount moved" in html  # the alarm table
    assert html.count('class="alarm"') == 2  # its row, and its mark on the timeline
    assert "&lt;b&gt;vip&lt;/b&gt;" in html
    assert "<b>vip</b>" not in html
    # nothing fetched from anywhere: no URL in any attribute, no script, no http(s) reference at all
    assert page.links == []
    assert page.scripts == 0
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE)


def test_the_live_window_mass_sits_where_the_shift_put_it(profile: ReferenceProfile) -> None:
    stored = judged(profile, 3, 20.0, datetime(2026, 1, 1, tzinfo=UTC))
    amount = stored.report["histograms"]["amount"]
    assert sum(amount["reference"]) == profile.features["amount"].count
    assert sum(amount["live"]) == 600
    # shifted two reference standard deviations up: most of the window lands in the top reference bin
    assert amount["live"][-1] / 600 > 0.5 > amount["reference"][-1] / sum(amount["reference"])


def test_before_any_window_the_reference_is_shown_with_no_verdict(profile: ReferenceProfile) -> None:
    page = Page()
    page.feed(render(monitor(profile), [], []))
    assert page.verdicts == {"amount": "none", "tenure": "none", "plan": "none", "prediction": "none"}
    assert page.svgs == 5
