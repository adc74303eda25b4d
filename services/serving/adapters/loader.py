"""Loading champions: from the registry at start, from model.promoted afterwards."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from libs.common import models
from libs.common.artifacts import ArtifactStore
from libs.common.events import ArtifactRef
from libs.common.schema import DatasetSchema
from services.serving.domain.models import LoadedModel

log = logging.getLogger(__name__)


async def load(
    store: ArtifactStore, model: str, version: int, artifact: ArtifactRef, schema: DatasetSchema, generation: float
) -> LoadedModel:
    """Read, verify and deserialise an artifact in a thread, off the event loop."""
    pipeline = await asyncio.to_thread(models.load, store, artifact)
    return LoadedModel(model, version, pipeline, schema, artifact, generation)


async def champions_from_registry(registry_url: str) -> list[dict[str, Any]]:
    """Every model's champion version record, as the registry has it now."""
    async with httpx.AsyncClient(base_url=registry_url, timeout=10) as client:
        listing = (await client.get("/v1/models")).raise_for_status().json()
        records = []
        for entry in listing:
            if "champion" in entry["aliases"]:
                answer = await client.get(f"/v1/models/{entry['model']}/aliases/champion")
                records.append(answer.raise_for_status().json())
        return records
