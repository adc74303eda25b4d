"""Rows to the DataFrame a model pipeline expects, shared by the trainer (which
fits on it) and serving (which predicts on it), so both see identical dtypes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from libs.common.schema import DatasetSchema, DType

if TYPE_CHECKING:
    import pandas as pd


def features_frame(schema: DatasetSchema, data: pd.DataFrame | Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The feature columns in schema order: categoricals as objects (missing as NaN), the rest as floats."""
    import pandas as pd  # here: serving imports this module for MISSING_CATEGORY and rarely needs pandas

    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame.from_records(list(data))
    out = pd.DataFrame(index=frame.index)
    for spec in schema.features:
        column = frame[spec.name] if spec.name in frame else pd.Series([None] * len(frame), index=frame.index)
        if spec.dtype is DType.CATEGORICAL:
            out[spec.name] = column.astype(object).where(column.notna(), np.nan)
        else:
            out[spec.name] = pd.to_numeric(column, errors="coerce").astype(float)
    return out


#: What a missing categorical value becomes inside a model pipeline, and what an
#: ONNX model is fed in its place (ONNX string tensors cannot hold NaN).
MISSING_CATEGORY = "__missing__"
