"""The runtime every service shares: settings, telemetry, PostgreSQL with
migrations, topic set-up, the broker, the outbox relay, bearer-token
authentication, and an HTTP app with ``/healthz``, ``/readyz``, ``/metrics``,
JSON errors and a body-size limit.

A service supplies its name, its migrations, a function that registers its
subscribers and one that mounts its routes; everything else is the same in
all five, so they start, fail and report alike. One concern a module:

- :mod:`.settings`: :class:`ServiceSettings`, the base of every service's settings;
- :mod:`.runtime`: :class:`ServiceSpec` (what makes a service itself) and :class:`Runtime` (its started pieces);
- :mod:`.lifecycle`: start and stop, in order, each step bounded;
- :mod:`.app`: :func:`build` (the HTTP app) and :func:`run` (uvicorn, the body of every ``__main__``);
- :mod:`.errors`, :mod:`.middlewares`, :mod:`.probes`: the HTTP parts every service shares.
"""

from libs.common.service.app import build, run
from libs.common.service.lifecycle import BROKER_STOP_TIMEOUT_S, STOP_TIMEOUT_S
from libs.common.service.middlewares import BodyLimitMiddleware, HttpMetrics, ObservabilityMiddleware, http_metrics
from libs.common.service.runtime import Runtime, ServiceSpec
from libs.common.service.settings import ServiceSettings

__all__ = [
    "BROKER_STOP_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "BodyLimitMiddleware",
    "HttpMetrics",
    "ObservabilityMiddleware",
    "Runtime",
    "ServiceSettings",
    "ServiceSpec",
    "build",
    "http_metrics",
    "run",
]
