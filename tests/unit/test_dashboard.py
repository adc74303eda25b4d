"""The Grafana dashboard, provisioned as code, only queries metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.unit.test_alert_rules import base, exported_metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
#: Metrics of faststream's Prometheus middleware, which every broker carries.
FASTSTREAM = {"faststream_published_messages_total", "faststream_received_processed_messages_total"}


def test_every_panel_queries_an_exported_metric() -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "driftloop.json").read_text())
    exported = {base(n) for n in exported_metrics()} | {base(n) for n in FASTSTREAM}
    seen = []
    for panel in dashboard["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = re.findall(r"\b((?:driftloop|faststream)_[a-z0-9_]+)", target["expr"])
            assert names, f"panel {panel['title']!r} queries no driftloop metric: {target['expr']}"
            missing = [n for n in names if base(n) not in exported]
            assert missing == [], f"panel {panel['title']!r} queries unknown metrics {missing}"
            seen.extend(names)
    for must in ("driftloop_model_version_served", "driftloop_live_metric", "driftloop_drift_score",
                 "driftloop_dlq_messages_total"):  # fmt: skip
        assert must in seen


def test_provisioning_points_at_the_dashboard_and_datasource() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads((GRAFANA / "dashboards" / "driftloop.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "driftloop.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
