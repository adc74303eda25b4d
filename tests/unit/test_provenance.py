"""The trust rule: a retrain fed mostly by untrusted principals waits for an approver."""

from __future__ import annotations

import pytest

from libs.common.events import Source, tally
from services.registry.domain.provenance import TrustConfig, excess_untrusted, hold_reason

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


def test_many_untrusted_principals_each_below_the_share_hold_together() -> None:
    # Ten tokens, 9% each: no single one is "most", but 90% of the labels came from nobody vouched for.
    sybils = [src(f"mallory-{i}", 27) for i in range(10)] + [src("crm", 30, trusted=True)]
    reason = hold_reason(trigger="drift", alarm_kinds=["performance"], label_sources=sybils, row_sources=None,
                         config=CONFIG)  # fmt: skip
    assert reason is not None
    assert (
        "90% of the 300 labels behind the performance alarm came from 10 untrusted principals "
        "('mallory-0' 9%, 'mallory-1' 9%, 'mallory-2' 9%, 7 more)"
    ) in reason
    rows = hold_reason(trigger="new_data", alarm_kinds=[], label_sources=None, config=CONFIG,
                       row_sources=[src("a", 300), src("b", 200), src("crm", 400, trusted=True)])  # fmt: skip
    assert rows is not None
    assert "56% of the 900 training rows came from 2 untrusted principals ('a' 33%, 'b' 22%)" in rows


def test_the_untrusted_share_is_summed_and_compared_with_the_threshold() -> None:
    assert excess_untrusted([src("a", 25), src("b", 25), src("c", 50, trusted=True)], CONFIG) is None  # half: allowed
    found = excess_untrusted([src("a", 26), src("b", 25), src("c", 49, trusted=True)], CONFIG)
    assert found is not None
    assert [(s.principal, s.count) for s in found.sources] == [("a", 26), ("b", 25)]
    assert found.share == pytest.approx(0.51)
    # The same principal reported twice (two batches) is one principal.
    again = excess_untrusted([src("a", 30), src("a", 30), src("c", 40, trusted=True)], CONFIG)
    assert again is not None
    assert again.sources == (src("a", 60),)
    strict = TrustConfig(max_untrusted_share=0.0)
    assert excess_untrusted([src("a", 1), src("c", 999, trusted=True)], strict) is not None
    assert excess_untrusted([src("c", 999, trusted=True)], strict) is None


def test_untrusted_minorities_mixed_into_trusted_data_do_not_hold() -> None:
    sources = [src(f"p{i}", 40) for i in range(5)] + [src("crm", 300, trusted=True)]
    assert hold_reason(trigger="drift", alarm_kinds=["performance"], label_sources=sources, row_sources=sources,
                       config=CONFIG) is None  # fmt: skip


def test_unrecorded_or_empty_sources_do_not_hold() -> None:
    assert hold_reason(trigger="drift", alarm_kinds=["performance"], label_sources=None, row_sources=None,
                       config=CONFIG) is None  # fmt: skip
    assert hold_reason(trigger="drift", alarm_kinds=["performance"], label_sources=[], row_sources=[src("m", 0)],
                       config=CONFIG) is None  # fmt: skip


def test_tally_sums_by_principal_and_trust_largest_first() -> None:
    assert tally([("a", False, 2), ("b", True, 5), ("a", False, 4), ("c", False, 0)]) == [
        src("a", 6), src("b", 5, trusted=True),
    ]  # fmt: skip
