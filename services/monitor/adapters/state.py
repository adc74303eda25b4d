"""The monitor's live state: model → its :class:`ModelMonitor`.

Windows live in memory (they refill within one window after a restart);
references, predictions awaiting labels, reports and alarms live in PostgreSQL
(:mod:`services.monitor.adapters.repository`).
"""

from __future__ import annotations

from libs.common.artifacts import ArtifactStore
from libs.common.events import ArtifactRef
from libs.common.profile import ReferenceProfile
from libs.common.schema import DatasetSchema
from services.monitor.adapters import repository
from services.monitor.domain.decision import DriftConfig
from services.monitor.domain.monitor import ModelMonitor


class Monitors:
    """Model → its monitor, loaded lazily from the reference table."""

    def __init__(
        self,
        store: ArtifactStore,
        config: DriftConfig,
        *,
        window_size: int,
        label_window: int,
        sample_size: int,
        window_step: int = 0,
    ) -> None:
        self.window_step = window_step
        self.store = store
        self.config = config
        self.window_size = window_size
        self.label_window = label_window
        self.sample_size = sample_size
        self._by_model: dict[str, ModelMonitor] = {}

    def get(self, model: str) -> ModelMonitor | None:
        return self._by_model.get(model)

    def all(self) -> list[ModelMonitor]:
        return list(self._by_model.values())

    def activate(
        self, model: str, version: int, profile_ref: ArtifactRef, schema: DatasetSchema, dataset: str | None
    ) -> ModelMonitor:
        current = self._by_model.get(model)
        if current is not None and current.version == version:
            return current
        profile = ReferenceProfile.from_bytes(self.store.get(profile_ref))
        monitor = ModelMonitor(model, version, profile, schema, dataset, self.config, self.window_size,
                               self.label_window, self.sample_size, self.window_step)  # fmt: skip
        self._by_model[model] = monitor
        return monitor

    async def load(
        self, conn: repository.Conn, model: str, *, version: int | None = None, fresh: bool = False
    ) -> ModelMonitor | None:
        """The monitor of ``model``: from memory when it is there and monitors ``version``
        (any version when None), else from the reference table (another replica may have
        handled the promotion). ``fresh`` always asks the table."""
        monitor = self._by_model.get(model)
        if monitor is not None and not fresh and version in (None, monitor.version):
            return monitor
        reference = await repository.monitored_reference(conn, model)
        if reference is None:
            return monitor
        if monitor is not None and monitor.version == reference.version:
            return monitor
        return self.activate(model, reference.version, reference.profile, reference.schema, reference.dataset)
