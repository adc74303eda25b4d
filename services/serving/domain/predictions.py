"""What one request served, kept columnar until the prediction log needs records.

The response needs labels, probabilities and ids; the prediction log needs a
record per row with its features (``PredictionRecord``). Building those records
is the most expensive per-row work serving does, so a request only
hands its columns over, and the log builds the records later, off the
request path, when it flushes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from typing import Any

import numpy as np

from libs.common.schema import FeatureSpec
from services.serving.domain.features import Columns, row_values
from services.serving.domain.models import Inference


@dataclass(frozen=True)
class Served:
    request_ids: list[str]
    columns: Columns
    inference: Inference
    classes: list[str] | None
    features: list[FeatureSpec]
    at: datetime

    @property
    def rows(self) -> int:
        return len(self.request_ids)

    def slice(self, start: int, stop: int) -> Served:
        """Rows ``start`` to ``stop`` (views, no copy): the log builds a large request's records a slice at a time."""
        return Served(self.request_ids[start:stop], self.columns.slice(start, stop),
                      self.inference.slice(start, stop), self.classes, self.features, self.at)  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        """One prediction record per row, as the monitor reads them (:class:`PredictionRecord`'s fields).

        Plain dicts: the event that carries them validates a whole batch at once, several times
        faster than building a model per row, and this runs for every prediction logged."""
        names = [f.name for f in self.features]
        columns = [row_values(f, self.columns.arrays[f.name]) for f in self.features]
        labels = plain_list(self.inference.labels)
        probabilities = probability_dicts(self.inference.probabilities, self.classes, self.rows)
        rows = zip(self.request_ids, zip(*columns, strict=True), labels, probabilities, strict=True)
        at = self.at
        return [
            {"request_id": request_id, "features": dict(zip(names, row, strict=True)), "prediction": label,
             "probabilities": probs, "at": at}
            for request_id, row, label, probs in rows
        ]  # fmt: skip


def plain_list(values: np.ndarray) -> list[Any]:
    """Labels as plain JSON values (str, int, float, bool)."""
    return list(values.tolist())


def probability_dicts(matrix: np.ndarray | None, classes: list[str] | None, rows: int) -> list[dict[str, float] | None]:
    """Class → probability per row, rounded to 6 places (what the API answers and the log records)."""
    if matrix is None or classes is None:
        return [None] * rows
    rounded = np.round(matrix, 6).tolist()
    if len(classes) == 2:  # the common case, written out: about three times faster than dict(zip()) per row
        first, second = classes
        return [{first: a, second: b} for a, b in rounded]
    return list(map(dict, map(zip, repeat(classes), rounded)))
