"""Shadow copies: the shadow version predicts on every request, after the caller has its answer.

A copy is a task scheduled on the event loop when the served version has
answered; the request never awaits it, so the shadow's inference (and a slow or
failing shadow) adds nothing to the response's latency. Its predictions go to
the prediction log under the shadow's version, flagged ``shadow`` and with the
request ids the caller received, so the monitor can score both versions on the
same labels; they are never returned.

Copies are bounded: when ``max_pending`` rows are still waiting for the shadow
(it is slower than the traffic), further copies are dropped and counted rather
than queued without bound, so a shadow can never take serving down with it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from prometheus_client import Counter

from services.serving.adapters.prediction_log import PredictionLog
from services.serving.domain.features import Columns
from services.serving.domain.models import LoadedModel
from services.serving.domain.predictions import Served

log = logging.getLogger(__name__)


class ShadowCopies:
    def __init__(self, plog: PredictionLog, copies: Counter, *, max_pending: int = 10_000) -> None:
        self.plog = plog
        self.copies = copies
        """``driftloop_shadow_predictions_total{model, outcome}``: logged, dropped or failed rows."""
        self.max_pending = max_pending
        self.pending = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def copy(
        self, model: str, shadow: LoadedModel, served: LoadedModel, columns: Columns, request_ids: list[str]
    ) -> None:
        """Schedule the shadow's prediction of ``columns`` (already validated for ``served``); returns at once."""
        if shadow.version == served.version:
            return  # the canary and the shadow are one version: it answered already
        if self.pending + columns.rows > self.max_pending or shadow.compiled.features != served.compiled.features:
            # Too far behind, or trained on other features than the request was validated for.
            self.copies.labels(model, "dropped").inc(columns.rows)
            return
        self.pending += columns.rows
        task = asyncio.get_running_loop().create_task(self._predict(model, shadow, columns, request_ids))
        self._tasks.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._tasks.discard)

    async def _predict(self, model: str, shadow: LoadedModel, columns: Columns, request_ids: list[str]) -> None:
        try:
            await asyncio.sleep(0)  # let the caller's answer go out first
            inference = await shadow.batcher.submit(columns)
            at = datetime.now(UTC)
            served = Served(request_ids, columns, inference, shadow.classes, shadow.compiled.features, at)
            self.plog.add(model, shadow.version, served, shadow=True)
            self.copies.labels(model, "logged").inc(columns.rows)
        except Exception as exc:  # a shadow never fails a request: it is counted and logged
            self.copies.labels(model, "failed").inc(columns.rows)
            log.warning("shadow %s v%d failed on %d rows: %r", model, shadow.version, columns.rows, exc)
        finally:
            self.pending -= columns.rows

    async def drain(self) -> None:
        """Wait for the copies in flight (at stop, before the prediction log's last flush)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
