"""A route names the event types its handler receives."""

from __future__ import annotations

import pytest

from libs.common.events import DriftDetected
from libs.common.kafka import Delivery, Route


async def _handle(event: DriftDetected, delivery: Delivery) -> None:
    return None


def test_a_route_keeps_its_handler_and_the_types_it_accepts() -> None:
    route = Route(_handle, (DriftDetected,))
    assert route.accepts == (DriftDetected,)
    assert route.handler is _handle


def test_a_route_accepting_nothing_is_refused() -> None:
    # an empty tuple would let parse_event pass any event type to a handler typed for one
    with pytest.raises(ValueError, match="at least one event type"):
        Route(_handle, ())
