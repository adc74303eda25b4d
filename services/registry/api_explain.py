"""``POST /v1/models/{model}/explain``: per-feature contributions to a few predictions.

Served by the registry, not by serving: serving's request path is tuned to the
millisecond, and an explanation scores thousands of rows. The registry knows
every version's signed pipeline, schema and holdout (the background rows), so
it loads the pipeline (signature checked, as serving does), keeps the last
few in memory, and computes off the event loop (see domain/explain.py).
"""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from fastapi import APIRouter, FastAPI, Path
from pydantic import BaseModel, Field

from libs.common import models
from libs.common.artifacts import ArtifactStore
from libs.common.auth import Role, require
from libs.common.errors import NotFound, ValidationFailed
from libs.common.events import ArtifactRef
from libs.common.frames import features_frame
from libs.common.http import INT4_MAX, errors
from libs.common.schema import DatasetSchema, Task
from libs.common.service import Runtime
from libs.common.signing import Verifier
from libs.common.validation import validate_row
from services.registry.adapters import repository
from services.registry.domain.explain import explain, samples_within

ModelName = Annotated[str, Path(description="Model name.")]
#: Background rows drawn from the version's holdout.
BACKGROUND_ROWS = 100
#: Pipelines kept loaded (by artifact sha256).
KEPT = 4


class ExplainRequest(BaseModel):
    instances: list[dict[str, Any]] = Field(min_length=1, max_length=20, description="Feature name → value.")
    version: int | None = Field(default=None, ge=1, le=INT4_MAX, description="Default: the champion's.")
    samples: int = Field(default=64, ge=1, le=1024, description="Permutation samples per instance.")


class InstanceExplanation(BaseModel):
    prediction: Any = Field(description="What the version predicts for the instance.")
    explained: str = Field(description="The output explained, e.g. 'probability of yes' or 'prediction'.")
    base_value: float = Field(description="Mean output over the background rows drawn from the holdout.")
    output: float = Field(description="base_value + the contributions' sum: the explained output itself.")
    contributions: dict[str, float] = Field(description="Feature → its share of output − base_value.")


class ExplainResponse(BaseModel):
    model: str
    version: int
    method: str
    samples: int
    background_rows: int
    explanations: list[InstanceExplanation]


def mount(app: FastAPI, rt: Runtime, artifacts_root: str, verifier: Verifier) -> None:
    router = APIRouter(prefix="/v1/models", tags=["explanations"])
    store = ArtifactStore(artifacts_root)
    loaded: OrderedDict[str, Any] = OrderedDict()

    def pipeline(ref: ArtifactRef) -> Any:
        if ref.sha256 not in loaded:
            verifier.verify(ref, "model")
            loaded[ref.sha256] = models.load(store, ref)
            while len(loaded) > KEPT:
                loaded.popitem(last=False)
        loaded.move_to_end(ref.sha256)
        return loaded[ref.sha256]

    @router.post("/{model}/explain", summary="Per-feature contributions to the predictions of a few instances",
                 responses=errors(404, 422), dependencies=[require(Role.PREDICTOR)])  # fmt: skip
    async def explain_route(model: ModelName, body: ExplainRequest) -> ExplainResponse:
        version = body.version or await repository.alias_version(rt.db, model, "champion")
        row = await repository.version(rt.db, model, version) if version else None
        if row is None:
            what = f"version {body.version}" if body.version else "champion"
            raise NotFound(f"model {model!r} has no {what}", model=model)
        schema = DatasetSchema.model_validate_json(row["schema"])
        x = features_frame(schema, instances(schema, body.instances))
        if not row["holdout"]:
            raise NotFound(f"{model} v{version} kept no holdout to draw background rows from", model=model)

        def compute() -> ExplainResponse:
            fitted = pipeline(ArtifactRef.model_validate_json(row["artifact"]))
            background = features_frame(schema, holdout(store, ArtifactRef.model_validate_json(row["holdout"])))
            background = background.sample(min(BACKGROUND_ROWS, len(background)), random_state=0)
            samples = samples_within(body.samples, len(x), x.shape[1])
            return answer(model, row["version"], schema, fitted, x, background, samples)

        return await asyncio.to_thread(compute)

    app.include_router(router)


def instances(schema: DatasetSchema, given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The instances coerced to the schema's types; a 422 naming every bad field otherwise."""
    rows, problems = [], {}
    for i, record in enumerate(given):
        row, found = validate_row(schema, record, from_text=False, require_target=False)
        unknown = sorted(set(record) - {f.name for f in schema.features})
        found += [(name, "not a feature of the model") for name in unknown]
        problems.update({f"instances[{i}].{name}": message for name, message in found})
        rows.append(row)
    if problems:
        raise ValidationFailed(f"invalid instances: {'; '.join(f'{k}: {v}' for k, v in problems.items())}",
                               fields=problems)  # fmt: skip
    return rows


def holdout(store: ArtifactStore, ref: ArtifactRef) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(store.get(ref))).to_pandas()


def answer(
    model: str, version: int, schema: DatasetSchema, fitted: Any, x: pd.DataFrame, background: pd.DataFrame,
    samples: int,
) -> ExplainResponse:  # fmt: skip
    predicted = fitted.predict(x)
    if schema.task is Task.CLASSIFICATION:
        classes = list(fitted.classes_)
        column = np.array([classes.index(p) for p in predicted])
        found = explain(lambda rows, i: fitted.predict_proba(rows)[np.arange(len(rows)), column[i]],
                        x, background, samples)  # fmt: skip
        explained = [f"probability of {p}" for p in predicted]
    else:
        found = explain(lambda rows, i: fitted.predict(rows), x, background, samples)
        explained = ["prediction"] * len(x)
    return ExplainResponse(
        model=model, version=version, samples=samples, background_rows=len(background),
        method="Shapley values by permutation sampling (Štrumbelj & Kononenko 2014), holdout background",
        explanations=[
            InstanceExplanation(prediction=_plain(p), explained=e, base_value=f.base_value, output=f.output,
                                contributions=f.contributions)
            for p, e, f in zip(predicted, explained, found, strict=True)
        ],
    )  # fmt: skip


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
