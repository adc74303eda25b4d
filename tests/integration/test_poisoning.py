"""The loop cannot be turned against itself: forged and repeated feedback is never scored."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cli.churn_stream import FEATURES, SCHEMA, ChurnStream
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.auth import Role
from libs.common.events import DriftDetected, Label, LabelsArrived, ModelTrained, Source, parse_event
from libs.common.request_ids import RequestIds
from libs.common.schema import DatasetSchema
from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from services.monitor.app import create_app as create_monitor
from services.monitor.settings import MonitorSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.serving.app import create_app as create_serving
from services.serving.settings import ServingSettings
from tests.conftest import Isolation, bearer, serve
from tests.factories import promoted, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_monitor import traffic
from tests.integration.test_registry import trained
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration
SECRET = "s" * 32
GOVERNED = DatasetSchema.model_validate(  # sex: sensitive, not a model input, sent with labels
    SCHEMA | {"attributes": [{"name": "sex", "dtype": "categorical", "nullable": True}], "sensitive": ["sex"]}
)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name{labels}`` in a Prometheus exposition (0 when absent)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith(name + "{") and set(head[len(name) + 1 : -1].split(",")) == wanted:
            return float(value)
    return 0.0


async def test_feedback_is_accepted_only_for_ids_serving_issued_for_the_model(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    settings = isolated.settings(ServingSettings, registry_url="http://127.0.0.1:9", request_id_secret=SECRET)
    app, _ = create_serving(settings)
    async with serve(app) as client:
        governed = promoted("churn", 1, trained_model(store, rows=600)).model_copy(update={"dataset_schema": GOVERNED})
        await publish(isolated, governed)

        async def predicted() -> Any:
            answer = await client.post("/v1/models/churn/predict", json={"instances": _instances(2)})
            return answer.json()["predictions"] if answer.status_code == 200 else None

        first, second = await wait_until(predicted, timeout=120, message="v1 to be served")
        issued = [first["request_id"], second["request_id"]]
        elsewhere = RequestIds(SECRET.encode()).mint("fraud")  # a real id, of another model
        body = {"model": "churn", "labels": [
            {"request_id": issued[0], "label": "yes"},
            {"request_id": "0123456789abcdef0123456789abcdef", "label": "no"},
            {"request_id": elsewhere, "label": "no"},
            {"request_id": issued[0], "label": "no"},
            {"request_id": issued[1], "label": "no", "attributes": {"sex": "f"}},
        ]}  # fmt: skip
        answer = await client.post("/v1/feedback", json=body)
        assert answer.status_code == 202
        assert answer.json()["accepted"] == 2
        assert answer.json()["refused"] == 3
        assert [p["field"] for p in answer.json()["problems"]] == [
            "labels.1.request_id", "labels.2.request_id", "labels.3.request_id",
        ]  # fmt: skip

        forged = {"model": "churn", "labels": [{"request_id": f"{i:032x}", "label": "no"} for i in range(50)]}
        refused = await client.post("/v1/feedback", json=forged)
        assert refused.status_code == 422
        assert refused.json()["error"] == "validation_failed"
        assert "labels.0.request_id" in refused.json()["message"]

        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "driftloop_feedback_refused_total", model="churn", reason="unknown") == 52
        assert metric(metrics, "driftloop_feedback_refused_total", model="churn", reason="duplicate") == 1

    records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.LABELS_ARRIVED), expect=1)
    events = [parse_event(r.value) for r in records]
    assert len(events) == 1  # the all-forged request published nothing
    assert isinstance(events[0], LabelsArrived)
    assert [(label.request_id, label.label) for label in events[0].labels] == [(issued[0], "yes"), (issued[1], "no")]
    assert [label.attributes for label in events[0].labels] == [None, {"sex": "f"}]
    # the attestation covers the attribute: the same label moved to another group no longer matches it
    ids, event = RequestIds(SECRET.encode()), events[0]
    assert ids.attested(event.attestation, "churn", event.principal, event.trusted, event.attested_labels())
    moved = [(issued[0], "yes"), (issued[1], "no", {"sex": "m"})]
    assert not ids.attested(event.attestation, "churn", event.principal, event.trusted, moved)


async def test_a_second_label_for_a_prediction_is_counted_and_never_scored(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=2000)
    settings = isolated.settings(MonitorSettings, window_size=1000, min_labels=10, label_window=300)
    app, _ = create_monitor(settings)
    stream = ChurnStream(seed=5)
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, model))

        async def monitored() -> bool:
            return (await client.get("/v1/models/churn/drift")).status_code == 200

        await wait_until(monitored, timeout=120, message="the monitor to take the reference")
        logged, labels = traffic(model, stream, 40, 0)
        early = LabelsArrived(producer="test", model="churn", labels=[Label(request_id="late-1", label="yes")])
        await publish(isolated, logged, labels)
        flipped = [Label(request_id=item.request_id, label=_flip(item.label)) for item in labels.labels]
        # the same labels again (a new event), flipped; a label waiting for its prediction, twice
        again = early.model_copy(update={"event_id": uuid.uuid4()})
        await publish(isolated, LabelsArrived(producer="test", model="churn", labels=flipped), early, again)

        async def counted() -> Any:
            text = (await client.get("/metrics")).text
            done = metric(text, "driftloop_labels_total", model="churn", matched="true") == 40
            return (
                text
                if done and metric(text, "driftloop_labels_total", model="churn", matched="duplicate") >= 41
                else None
            )

        text = await wait_until(counted, timeout=120, message="labels matched and duplicates counted")
        assert metric(text, "driftloop_labels_total", model="churn", matched="duplicate") == 41
        # labels may overtake their predictions (two topics): then all 40 waited first
        assert metric(text, "driftloop_labels_total", model="churn", matched="waiting") in (1, 41)
        state = (await client.get("/v1/models/churn/drift")).json()
        assert state["labels_seen"] == 40
        truth = {item.request_id: item.label for item in labels.labels}
        accuracy = sum(str(r.prediction) == truth[r.request_id] for r in logged.records) / 40
        assert state["live"]["value"] == pytest.approx(accuracy)  # scored on the first labels, not the flipped


async def test_the_monitor_refuses_labels_for_ids_serving_never_issued(isolated: Isolation) -> None:
    """A producer writing labels.arrived directly skips serving's check; the monitor checks the ids again,
    and that serving attested the event's sender and trust."""
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=2000)
    settings = isolated.settings(MonitorSettings, window_size=1000, min_labels=10, request_id_secret=SECRET)
    app, _ = create_monitor(settings)
    ids = RequestIds(SECRET.encode())
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, model))

        async def monitored() -> bool:
            return (await client.get("/v1/models/churn/drift")).status_code == 200

        await wait_until(monitored, timeout=120, message="the monitor to take the reference")
        logged, labels = traffic(model, stream=ChurnStream(seed=6), n=40, start=0)
        issued = ids.mint_many("churn", 40)
        renamed = dict(zip((r.request_id for r in logged.records), issued, strict=True))
        logged = logged.model_copy(
            update={"records": [r.model_copy(update={"request_id": renamed[r.request_id]}) for r in logged.records]}
        )
        truth = [Label(request_id=renamed[item.request_id], label=item.label) for item in labels.labels]
        flipped = [Label(request_id=item.request_id, label=_flip(item.label)) for item in truth[:10]]
        made_up = [Label(request_id=f"{i:032x}", label="no") for i in range(5)]
        other_model = [Label(request_id=ids.mint("fraud"), label="no")]

        def event(items: list[Label], principal: str = "crm", trusted: bool = True) -> LabelsArrived:
            """Labels as serving publishes them: attested for who sent them."""
            tag = ids.attest("churn", principal, trusted, [(i.request_id, i.label) for i in items])
            return LabelsArrived(producer="test", model="churn", labels=items, principal=principal, trusted=trusted,
                                 attestation=tag)  # fmt: skip

        # Real ids flipped plus one made-up id: refused whole, the real ids' labels included.
        await publish(isolated, logged, event(made_up), event(flipped + made_up[:1]), event(other_model))
        # Real ids, but the untrusted sender passed off as the trusted upstream account; and no attestation at all.
        passed_off = event(flipped, principal="mallory", trusted=False).model_copy(
            update={"principal": "crm", "trusted": True}
        )
        unattested = event(flipped).model_copy(update={"attestation": None})
        await publish(isolated, passed_off, unattested)
        await publish(isolated, event(truth[10:]))

        async def counted() -> Any:
            text = (await client.get("/metrics")).text
            return text if metric(text, "driftloop_labels_total", model="churn", matched="true") >= 30 else None

        text = await wait_until(counted, timeout=120, message="the genuine labels scored")
        assert metric(text, "driftloop_labels_refused_total", model="churn", reason="unissued") == 7
        assert metric(text, "driftloop_labels_refused_total", model="churn", reason="unattested") == 20
        assert metric(text, "driftloop_labels_total", model="churn", matched="true") == 30
        assert metric(text, "driftloop_labels_total", model="churn", matched="waiting") in (0, 30)  # never the fakes
        state = (await client.get("/v1/models/churn/drift")).json()
        assert state["labels_seen"] == 30
        answers = {r.request_id: str(r.prediction) for r in logged.records}
        accuracy = sum(answers[item.request_id] == item.label for item in truth[10:]) / 30
        assert state["live"]["value"] == pytest.approx(accuracy)  # the flipped labels were never scored

    dead = await read_topic(isolated.kafka.bootstrap, topics.dlq(isolated.kafka.topic(topics.LABELS_ARRIVED)), expect=5)
    headers = [{k: bytes(v).decode() for k, v in r.headers} for r in dead]
    types = sorted(h[topics.HEADER_DLQ_ERROR_TYPE] for h in headers)
    assert types == ["UnattestedLabels"] * 2 + ["UnissuedRequestIds"] * 3
    reasons = sorted(h[topics.HEADER_DLQ_REASON] for h in headers)
    assert reasons[0].startswith("1 of the 1 request ids were never issued by serving for model 'churn'")
    assert reasons[1].startswith("1 of the 11 request ids were never issued")
    assert reasons[2].startswith("5 of the 5 request ids were never issued")
    assert reasons[3].startswith("labels.arrived for model 'churn' from 'crm' carries no attestation")
    assert reasons[4].startswith("labels.arrived for model 'churn' from 'crm' does not match its attestation")


def _instances(n: int) -> list[dict[str, Any]]:
    return [{k: r[k] for k in FEATURES} for r in ChurnStream(seed=3).batch(n)]


def _flip(label: Any) -> str:
    return "no" if label == "yes" else "yes"


@pytest.mark.timeout(600)
async def test_a_retrain_fed_mostly_by_one_untrusted_principal_stops_at_candidate(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    app, runtime = create_registry(isolated.settings(RegistrySettings, min_metric=0.6, min_gain=0.01))
    mallory, upstream = Source(principal="mallory", trusted=False, count=280), Source(principal="crm", trusted=True,
                                                                                        count=20)  # fmt: skip
    alarm = DriftDetected(producer="test", model="churn", version=1, kinds=["performance"], window_size=300,
                          summary="live accuracy 0.000", label_sources=[mallory, upstream])  # fmt: skip
    first = trained(store, 0.7)  # one fitted model; the later versions reuse its artifact

    def challenger(accuracy: float, **update: Any) -> ModelTrained:
        return first.model_copy(update={
            "event_id": uuid.uuid4(), "job_id": str(uuid.uuid4()), "metrics": {"accuracy": accuracy},
            "champion_metrics": {"accuracy": 0.7}, "champion_version": 1, **update,
        })  # fmt: skip

    async with serve(app) as client:
        await publish(isolated, first)  # v1 first: a drift-triggered version after the alarm would be held too
        await wait_until(lambda: _versions(client, 1), timeout=120, message="v1")
        await publish(isolated, alarm)
        await wait_until(lambda: _alarms(runtime), timeout=120, message="the registry to record the alarm")
        after_alarm = challenger(0.9, trigger_event_id=alarm.event_id)
        await publish(isolated, after_alarm)
        await wait_until(lambda: _versions(client, 2), timeout=120, message="v2")
        poisoned_rows = challenger(0.95, trigger="new_data", row_sources=[
            Source(principal="mallory", trusted=False, count=2000), Source(principal="crm", trusted=True, count=500),
        ])  # fmt: skip
        await publish(isolated, poisoned_rows)
        await wait_until(lambda: _versions(client, 3), timeout=120, message="v3")
        clean = challenger(0.8, trigger="new_data", row_sources=[Source(principal="crm", trusted=True, count=2500)])
        await publish(isolated, clean)
        listed = await wait_until(lambda: _versions(client, 4), timeout=120, message="v4")
        assert [(v["version"], v["decision"], v["aliases"]) for v in listed] == [
            (4, "promoted", ["champion"]), (3, "held", ["candidate"]), (2, "held", []), (1, "promoted", []),
        ]  # fmt: skip
        audit = (await client.get("/v1/models/churn/audit")).json()
        held = [a for a in audit if a["alias"] == "candidate"]
        assert [a["to_version"] for a in held] == [3, 2]
        assert all(a["actor"] == "policy" for a in held)
        assert (
            "93% of the 300 labels behind the performance alarm came from untrusted principal 'mallory'"
            in (held[1]["reason"])
        )
        assert "80% of the 2500 training rows came from untrusted principal 'mallory'" in held[0]["reason"]
        assert "held for approval" in held[0]["reason"]


async def _alarms(runtime: Any) -> int:
    return int(await runtime.db.fetchval("SELECT count(*) FROM alarms"))


async def _versions(client: Any, n: int) -> list[dict[str, Any]] | None:
    listed = (await client.get("/v1/models/churn/versions")).json()
    return listed if isinstance(listed, list) and len(listed) >= n else None


async def test_records_and_feedback_are_rate_limited_per_principal(isolated: Isolation) -> None:
    settings = isolated.settings(IngestSettings, records_rate_per_s=10, records_burst=100)
    app, _ = create_ingest(settings)
    async with serve(app) as client:
        assert (await client.put("/v1/datasets/churn", json=SCHEMA)).status_code in (200, 201)
        mallory = await bearer(app, Role.PRODUCER, principal="mallory")
        other = await bearer(app, Role.PRODUCER, principal="upstream")
        rows = ChurnStream(seed=4).batch(60)
        first = await client.post("/v1/datasets/churn/records", json=rows, headers=mallory)
        assert first.status_code == 200
        over = await client.post("/v1/datasets/churn/records", json=rows, headers=mallory)
        assert over.status_code == 429
        assert over.headers["Retry-After"] == "2"  # 20 rows short at 10 rows/s
        body = over.json()
        assert body["error"] == "rate_limited"
        assert body["details"]["principal"] == "mallory"
        assert 0 < body["details"]["retry_after_s"] <= 2.0  # the bucket refilled a little meanwhile
        stored = await client.post("/v1/datasets/churn/records", json=rows, headers=other)
        assert stored.status_code == 200  # another principal has its own bucket
        assert stored.json()["version"] == 2  # the refused request stored nothing

    serving_settings = isolated.settings(
        ServingSettings, registry_url="http://127.0.0.1:9", feedback_rate_per_s=1, feedback_burst=5
    )
    app, _ = create_serving(serving_settings)
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, trained_model(ArtifactStore(isolated.artifacts_root), rows=600)))
        producer = await bearer(app, Role.PRODUCER, principal="mallory")
        labels = {"model": "churn", "labels": [{"request_id": f"{i:032x}", "label": "no"} for i in range(5)]}
        await wait_until(lambda: _served(client), timeout=120, message="v1 to be served")
        assert (await client.post("/v1/feedback", json=labels, headers=producer)).status_code == 422  # forged
        limited = await client.post("/v1/feedback", json=labels, headers=producer)
        assert limited.status_code == 429  # refused labels still cost: forging is not free
        assert limited.headers["Retry-After"] in ("4", "5")


async def test_replicas_share_a_principals_rate_limit(isolated: Isolation) -> None:
    """Two ingest replicas: what mallory spent on one is gone on the other (the buckets are in PostgreSQL)."""
    settings = isolated.settings(IngestSettings, records_rate_per_s=0.5, records_burst=100)
    (one, _), (two, _) = create_ingest(settings), create_ingest(settings)
    rows = ChurnStream(seed=7).batch(60)
    async with serve(one) as first, serve(two) as second:
        assert (await first.put("/v1/datasets/churn", json=SCHEMA)).status_code in (200, 201)
        mallory = await bearer(one, Role.PRODUCER, principal="mallory")
        assert (await first.post("/v1/datasets/churn/records", json=rows, headers=mallory)).status_code == 200
        over = await second.post("/v1/datasets/churn/records", json=rows, headers=mallory)
        assert over.status_code == 429  # the second replica's own memory had a full bucket
        assert over.json()["details"]["principal"] == "mallory"
        assert 30 <= over.json()["details"]["retry_after_s"] <= 40  # 20 rows short at 0.5 rows/s
        upstream = await bearer(two, Role.PRODUCER, principal="upstream")
        assert (await second.post("/v1/datasets/churn/records", json=rows, headers=upstream)).status_code == 200


async def _served(client: Any) -> bool:
    return bool((await client.get("/v1/models/churn")).status_code == 200)
