"""The console's rules with no I/O: which alias moves a role is offered, CSRF and origin checks, metrics reading."""

from __future__ import annotations

import pytest

from services.console.domain import ops
from services.console.domain.actions import Kind, actions_for
from services.console.domain.session import csrf_ok, csrf_value, safe_next, same_origin

ALIASES = {"champion": 3, "canary": 4}


def offered(version: int, *roles: str) -> set[tuple[str, str]]:
    return {(a.kind.value, a.alias) for a in actions_for(version, ALIASES, roles)}


def test_a_reader_is_offered_nothing() -> None:
    assert all(offered(v, "reader") == set() for v in (1, 3, 4, 5))
    assert offered(4, "approver") == {("approve", "champion")}  # ending the canary is the operator's


def test_an_approver_may_move_champion_forward_only() -> None:
    assert offered(5, "approver") == {("approve", "champion")}
    assert offered(4, "approver") == {("approve", "champion")}
    assert offered(2, "approver") == set()  # an older version: a rollback, the operator's


def test_an_operator_rolls_back_and_places_canary_and_shadow() -> None:
    assert offered(2, "operator") == {("rollback", "champion"), ("promote", "canary"), ("promote", "shadow")}
    assert offered(4, "operator") == {("promote", "shadow"), ("end", "canary")}  # already the canary
    assert offered(3, "operator") == set()  # the champion itself
    assert ("approve", "champion") not in offered(5, "operator")


def test_admin_may_do_all_and_the_first_champion_is_an_approval() -> None:
    assert offered(2, "admin") == {("rollback", "champion"), ("promote", "canary"), ("promote", "shadow")}
    first = actions_for(1, {}, ["admin"])  # no champion yet: no canary or shadow beside it either
    assert [(a.kind, a.alias, a.role) for a in first] == [(Kind.APPROVE, "champion", "approver")]


def test_csrf_value_belongs_to_one_session() -> None:
    assert csrf_ok("dl_token-a", csrf_value("dl_token-a"))
    assert not csrf_ok("dl_token-b", csrf_value("dl_token-a"))
    assert not csrf_ok("dl_token-a", None)
    assert not csrf_ok("dl_token-a", "")


@pytest.mark.parametrize(
    ("origin", "referer", "host", "ok"),
    [
        ("http://127.0.0.1:8006", None, "127.0.0.1:8006", True),
        (None, "http://127.0.0.1:8006/models/x", "127.0.0.1:8006", True),
        ("https://evil.example", "http://127.0.0.1:8006/models", "127.0.0.1:8006", False),
        ("null", None, "127.0.0.1:8006", False),
        (None, None, "127.0.0.1:8006", False),
        ("http://127.0.0.1:8006.evil.example", None, "127.0.0.1:8006", False),
    ],
)
def test_only_posts_from_the_console_itself_pass(origin: str | None, referer: str | None, host: str, ok: bool) -> None:
    assert same_origin(origin, referer, host) is ok


@pytest.mark.parametrize(
    ("target", "expected"),
    [("/models/churn", "/models/churn"), ("//evil.example/x", "/models"), ("https://evil.example", "/models"),
     ("/\\evil.example", "/models"), (None, "/models")],
)  # fmt: skip
def test_after_sign_in_only_a_local_path(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


METRICS = """\
# HELP driftloop_consumer_lag Messages behind the end of the partition, per consumer group.
# TYPE driftloop_consumer_lag gauge
driftloop_consumer_lag{group="monitor",partition="0",topic="predictions.logged"} 12.0
driftloop_consumer_lag{group="trainer",partition="1",topic="data.arrived"} 0.0
# HELP driftloop_dlq_messages_total Messages sent to a dead-letter topic.
# TYPE driftloop_dlq_messages_total counter
driftloop_dlq_messages_total{error_type="InvalidEvent",group="monitor",topic="labels.arrived"} 2.0
driftloop_dlq_messages_created{error_type="InvalidEvent",group="monitor",topic="labels.arrived"} 1.7e+09
"""


def test_lag_and_dead_letters_are_read_from_prometheus_text() -> None:
    assert ops.consumer_lag(METRICS) == [
        ops.Lag("monitor", "predictions.logged", "0", 12),
        ops.Lag("trainer", "data.arrived", "1", 0),
    ]
    assert ops.dead_lettered("monitor", METRICS) == [
        ops.DeadLettered("monitor", "labels.arrived", "monitor", "InvalidEvent", 2)
    ]
    assert ops.consumer_lag("") == []
