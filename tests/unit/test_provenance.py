"""The trust rule: a retrain fed mostly by one untrusted principal waits for an approver."""

from __future__ import annotations

from libs.common.events import Source, tally
from services.registry.domain.provenance import TrustConfig, dominant_untrusted, hold_reason

CONFIG = TrustConfig(max_untrusted_share=0.5)


def src(principal: str, count: int, *, trusted: bool = False) -> Source:
    return Source(principal=principal, trusted=trusted, count=count)


def test_labels_behind_a_performance_alarm_mostly_from_one_untrusted_principal_hold_the_retrain() -> None:
    reason = hold_reason(
        trigger="drift", alarm_kinds=["performance"], label_sources=[src("mallory", 290), src("crm", 10, trusted=True)],
        row_sources=[src("crm", 4000, trusted=True)], config=CONFIG,
    )  # fmt: skip
    assert reason is not None
    assert "97% of the 300 labels behind the performance alarm came from untrusted principal 'mallory'" in reason
    assert "training rows" not in reason


def test_poisoned_rows_hold_any_retrain() -> None:
    for trigger, kinds in (("drift", ["data_drift"]), ("new_data", [])):
        reason = hold_reason(
            trigger=trigger, alarm_kinds=kinds, label_sources=None,
            row_sources=[src("mallory", 2000), src("crm", 500, trusted=True)], config=CONFIG,
        )  # fmt: skip
        assert reason is not None
        assert "80% of the 2500 training rows came from untrusted principal 'mallory'" in reason


def test_trusted_sources_leave_the_loop_automatic() -> None:
    reason = hold_reason(
        trigger="drift", alarm_kinds=["performance", "data_drift"], label_sources=[src("demo", 300, trusted=True)],
        row_sources=[src("demo", 3000, trusted=True)], config=CONFIG,
    )  # fmt: skip
    assert reason is None


def test_labels_only_count_for_performance_alarms() -> None:
    kwargs = {"label_sources": [src("mallory", 300)], "row_sources": None, "config": CONFIG}
    assert hold_reason(trigger="drift", alarm_kinds=["data_drift"], **kwargs) is None  # type: ignore[arg-type]
    assert hold_reason(trigger="request", alarm_kinds=["performance"], **kwargs) is None  # type: ignore[arg-type]


def test_many_untrusted_principals_each_below_the_share_do_not_hold() -> None:
    sources = [src(f"p{i}", 100) for i in range(5)]
    assert dominant_untrusted(sources, CONFIG) is None
    assert dominant_untrusted([src("a", 50), src("b", 50, trusted=True)], CONFIG) is None  # exactly half: allowed
    found = dominant_untrusted([src("a", 51), src("b", 49, trusted=True)], CONFIG)
    assert found is not None
    assert found[0].principal == "a"


def test_unrecorded_or_empty_sources_do_not_hold() -> None:
    assert hold_reason(trigger="drift", alarm_kinds=["performance"], label_sources=None, row_sources=None,
                       config=CONFIG) is None  # fmt: skip
    assert hold_reason(trigger="drift", alarm_kinds=["performance"], label_sources=[], row_sources=[src("m", 0)],
                       config=CONFIG) is None  # fmt: skip


def test_tally_sums_by_principal_and_trust_largest_first() -> None:
    assert tally([("a", False, 2), ("b", True, 5), ("a", False, 4), ("c", False, 0)]) == [
        src("a", 6), src("b", 5, trusted=True),
    ]  # fmt: skip
