"""What one request served, kept columnar all the way into the prediction log.

The response needs labels, probabilities and ids; the prediction log needs
each row's features as well. A request only hands its columns over
(:class:`Served`); the log joins the columns of many requests and publishes
them as columns (:func:`log_columns`), and the records per row are built where
the event is read, never on serving's event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, repeat
from typing import Any

import numpy as np

from libs.common.schema import DType, FeatureSpec
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


def log_columns(parts: Sequence[Served]) -> dict[str, Any]:
    """What ``parts`` served (one version, in order), in ``predictions.logged``'s columnar form
    (:func:`libs.common.events.records_from_columns`): one plain list per feature and field.

    A record per row (a dict of features inside a dict per prediction) made the log the costliest
    per-row work serving did, on the event loop every response shares: about 4 ms for 1,000 rows,
    built and encoded. Columns cost a few NumPy calls and list conversions per batch; the records
    are built where the event is read.
    """
    first = parts[0]
    columns = Columns.concat([p.columns for p in parts])
    inference = first.inference if len(parts) == 1 else Inference.concat([p.inference for p in parts])
    matrix = inference.probabilities
    probabilities = None
    if matrix is not None and first.classes is not None:
        rounded = np.round(matrix, 6).T.tolist()
        probabilities = dict(zip(first.classes, rounded, strict=True))
    at: Any = first.at if len(parts) == 1 else list(chain.from_iterable(repeat(p.at, p.rows) for p in parts))
    return {
        "request_ids": first.request_ids if len(parts) == 1 else [i for p in parts for i in p.request_ids],
        "at": at,
        "predictions": plain_list(inference.labels),
        "probabilities": probabilities,
        "features": {f.name: log_values(f, columns.arrays[f.name]) for f in first.features},
    }


def log_values(spec: FeatureSpec, column: np.ndarray) -> list[Any]:
    """A column as the plain values ingest would have stored (None for missing), converted by NumPy
    where it can: :func:`~services.serving.domain.features.row_values` does the same value by value."""
    if spec.dtype is DType.CATEGORICAL or column.size == 0:
        return list(column)
    if spec.dtype is DType.NUMERIC:
        return plain_list(column)  # NaN stays a float: orjson writes it as null, what a missing value is
    if np.isnan(column).any() or (spec.dtype is DType.INTEGER and np.abs(column).max() >= 2**53):
        return row_values(spec, column)  # missing values, or integers past a float's exact range: one by one
    return plain_list(column.astype(np.int64) if spec.dtype is DType.INTEGER else column == 1.0)


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
