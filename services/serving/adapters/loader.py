"""Loading champions: from the registry at start, from model.promoted afterwards.

A version runs on onnxruntime when its ONNX export passed the trainer's parity
check, and on its scikit-learn pipeline otherwise. An ONNX export that is
missing, failed parity, or cannot be loaded never keeps a version from
serving: it falls back to scikit-learn and says why.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from typing import Any

import httpx

from libs.common import models
from libs.common.artifacts import ArtifactStore
from libs.common.events import ArtifactRef, OnnxExport
from libs.common.schema import DatasetSchema
from services.serving.adapters.runtimes import OnnxRuntime, SklearnRuntime
from services.serving.domain.features import CompiledSchema
from services.serving.domain.models import BatchPolicy, LoadedModel, ModelRuntime, RuntimeChoice

log = logging.getLogger(__name__)


async def load(
    store: ArtifactStore,
    model: str,
    version: int,
    artifact: ArtifactRef,
    schema: DatasetSchema,
    generation: float,
    *,
    onnx: OnnxExport | None = None,
    batching: BatchPolicy | None = None,
    onnx_threads: int = 1,
) -> LoadedModel:
    """Read, verify and prepare a version's runtime in a thread, off the event loop."""
    choice, memory = await asyncio.to_thread(_measured, store, model, version, artifact, schema, onnx, onnx_threads)
    loaded = LoadedModel(model, version, choice, schema, artifact, generation, onnx=onnx, memory_bytes=memory,
                         batching=batching or BatchPolicy())  # fmt: skip
    # What the load made (the runtime, modules imported for it: onnxruntime, scikit-learn) lives as long
    # as the version. Left to the collector, those hundreds of thousands of objects sat in its oldest
    # generation, and the full collections that request churn kept triggering walked them all: ~70 ms
    # pauses every few seconds at c=64, the tail latency. Frozen, they are never scanned (O(1), no
    # collection); a version swapped out is still freed by reference counting.
    gc.freeze()
    return loaded


_LOADING = threading.Lock()


def _measured(
    store: ArtifactStore,
    model: str,
    version: int,
    artifact: ArtifactRef,
    schema: DatasetSchema,
    onnx: OnnxExport | None,
    onnx_threads: int,
) -> tuple[RuntimeChoice, int | None]:
    """The runtime, ready (one inference made, so its first allocations are done), and the resident
    memory the process grew by meanwhile: what serving this version costs. Loads run one at a time,
    so one load's figure never counts another's; requests answered meanwhile can add a little."""
    with _LOADING:
        before = resident_bytes()
        choice = choose_runtime(store, model, version, artifact, schema, onnx, onnx_threads)
        warm_up(choice.runtime, schema)
        after = resident_bytes()
    return choice, after - before if before is not None and after is not None else None


def warm_up(runtime: ModelRuntime, schema: DatasetSchema) -> None:
    """One inference on a row of missing values before the version serves: onnxruntime allocates
    its buffers on the first call, which would otherwise land on the first request after a swap."""
    columns = CompiledSchema(schema).missing_row()
    try:
        runtime.infer(columns)
    except Exception as exc:  # a pipeline that cannot take missing values: the first request warms it up
        log.info("warm-up skipped (%s: %s)", type(exc).__name__, exc)


def choose_runtime(
    store: ArtifactStore,
    model: str,
    version: int,
    artifact: ArtifactRef,
    schema: DatasetSchema,
    onnx: OnnxExport | None,
    onnx_threads: int = 1,
) -> RuntimeChoice:
    """onnxruntime when the export exists, held parity and loads; scikit-learn otherwise, with the reason."""
    if onnx is None:
        reason = "scikit-learn: the version has no ONNX export"
    elif onnx.artifact is None:
        reason = f"scikit-learn: the ONNX export failed ({onnx.detail or 'no detail'})"
    elif not onnx.parity:
        reason = f"scikit-learn: the ONNX export failed the parity check ({onnx.detail or 'no detail'})"
    else:
        try:
            runtime = OnnxRuntime(models.load_onnx(store, onnx.artifact), schema, threads=onnx_threads)
            return RuntimeChoice(runtime, f"onnxruntime: parity held ({onnx.detail or 'no detail'})")
        except Exception as exc:  # a refused artifact, or any of onnxruntime's own errors for a bad graph
            reason = f"scikit-learn: the ONNX export could not be loaded ({exc})"
            log.warning("model %s v%d: %s", model, version, reason)
    return RuntimeChoice(SklearnRuntime(models.load(store, artifact), schema), reason)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), for the memory each loaded version adds."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


async def registry_client(registry_url: str, token: str) -> httpx.AsyncClient:
    """A client of the registry with a ``reader`` token, made on a worker thread: its TLS context
    reads the CA bundle (about 100 ms of CPU), which on the event loop stalls every request meanwhile."""
    headers = {"Authorization": f"Bearer {token}"}
    return await asyncio.to_thread(httpx.AsyncClient, base_url=registry_url, timeout=10, headers=headers)


async def champions_from_registry(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every model's champion, canary and shadow version records, as the registry has them now; each
    record carries ``served_as`` (the alias) and, for a canary, ``share`` (its percentage of traffic)."""
    listing = (await client.get("/v1/models")).raise_for_status().json()
    records = []
    for entry in listing:
        for alias in ("champion", "canary", "shadow"):
            if alias in entry["aliases"]:
                answer = (await client.get(f"/v1/models/{entry['model']}/aliases/{alias}")).raise_for_status()
                share = (entry.get("canary") or {}).get("share", 0.0) if alias == "canary" else None
                records.append({**answer.json(), "served_as": alias, "share": share})
    return records
