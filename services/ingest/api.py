"""HTTP API of the ingest service."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from libs.common import idempotency
from libs.common.auth import Principal, Role, require
from libs.common.errors import BadRequest, ValidationFailed
from libs.common.http import INT4_MAX, INT8_MAX, errors
from libs.common.idempotency import IdempotencyKey, fingerprint
from libs.common.jsonbody import off_loop
from libs.common.ratelimit import RateLimit
from libs.common.schema import DatasetSchema
from libs.common.service import Runtime
from services.ingest.adapters import repository
from services.ingest.domain.parsing import ParsedBody, parse_body
from services.ingest.domain.validation import ValidationResult, validate
from services.ingest.settings import IngestSettings

RECORDS_SCOPE = "ingest.records"
DatasetName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Dataset name.")]
VersionNumber = Annotated[int, Path(ge=0, le=INT4_MAX, description="Dataset version.")]


class RejectionOut(BaseModel):
    row: int
    field: str | None
    reason: str


class DeclaredOut(BaseModel):
    dataset: str
    created: bool
    dataset_schema: DatasetSchema = Field(alias="schema")


_SCHEMA_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DatasetSchema"}}},
    }
}


_RECORDS_BODY = {
    "requestBody": {
        "required": True,
        "description": "A JSON array of records (column → value); also accepted: "
        '{"records": [...]}, NDJSON (application/x-ndjson), CSV with a header line (text/csv), an Arrow IPC '
        "stream (application/vnd.apache.arrow.stream) and Parquet (application/vnd.apache.parquet), each "
        "optionally with Content-Encoding gzip, deflate or zstd.",
        "content": {
            "application/json": {"schema": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
        },
    }
}


def _parse_schema(body: bytes) -> tuple[DatasetSchema, str]:
    """The schema in ``body`` and its canonical JSON (what is stored)."""
    if not body.strip():
        raise BadRequest("request body is empty or not valid JSON")
    try:
        schema = DatasetSchema.model_validate_json(body)
        return schema, schema.model_dump_json()
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest(f"body is not valid JSON: {exc.errors()[0]['msg']}") from exc
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


def _declared(dataset: str, text: str, *, created: bool) -> Response:
    """The :class:`DeclaredOut` answer, around the schema's JSON already made for storage
    (serialising a wide schema again would hold the GIL for as long once more)."""
    head = json.dumps({"dataset": dataset, "created": created})[:-1]
    return Response(f'{head}, "schema": {text}}}', status_code=201 if created else 200, media_type="application/json")


class SubmissionOut(BaseModel):
    dataset: str
    submission_id: str
    received: int
    accepted: int
    rejected: int
    version: int | None
    total_rows: int
    rejections: list[RejectionOut]


def mount(app: FastAPI, rt: Runtime, settings: IngestSettings, stored: asyncio.Event | None = None) -> None:
    """The dataset routes; ``stored`` is set after each submission that stored rows (the compactor waits on it)."""
    limit = RateLimit("records", settings.records_rate_per_s, settings.records_burst,
                      shared=lambda: rt.auth.db, installation=settings.kafka.topic_prefix)  # fmt: skip
    router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

    @router.put(
        "/{dataset}", status_code=201, response_model=DeclaredOut, summary="Declare (or confirm) a dataset's schema",
        openapi_extra=_SCHEMA_BODY,
        responses={**errors(409), 200: {"model": DeclaredOut, "description": "Already declared: confirmed, or "
                                        "replaced while the dataset holds no data."}},
        dependencies=[require(Role.ADMIN)],
    )  # fmt: skip
    async def declare(dataset: DatasetName, request: Request) -> Response:
        # The body is read by hand so that a wide schema (10⁵ features, megabytes)
        # is parsed and validated off the event loop.
        schema, text = await off_loop(len(await request.body()), _parse_schema, await request.body())
        created = await repository.declare(rt.db, dataset, schema, text)
        return _declared(dataset, text, created=created)

    @router.get("", summary="List datasets", dependencies=[require(Role.READER)])
    async def list_datasets() -> list[dict[str, Any]]:
        return await repository.list_datasets(rt.db)

    @router.get("/{dataset}", summary="A dataset: schema, latest version and submission counts",
                dependencies=[require(Role.READER)])  # fmt: skip
    async def show(dataset: DatasetName) -> dict[str, Any]:
        return await repository.summary(rt.db, dataset)

    @router.get("/{dataset}/versions/{version}", summary="The manifest of one dataset version",
                dependencies=[require(Role.READER)])  # fmt: skip
    async def version(dataset: DatasetName, version: VersionNumber) -> dict[str, Any]:
        return await repository.version(rt.db, dataset, version)

    @router.post(
        "/{dataset}/records", response_model=SubmissionOut, responses=errors(409, 415),
        summary="Submit records: JSON array, NDJSON, CSV, Arrow IPC stream or Parquet", openapi_extra=_RECORDS_BODY,
    )  # fmt: skip
    async def submit(
        dataset: DatasetName,
        request: Request,
        principal: Annotated[Principal, require(Role.PRODUCER)],
        mode: Annotated[
            Literal["partial", "strict"],
            Query(description="partial: store valid rows, keep the rest as rejections; strict: all or nothing"),
        ] = "partial",
        key: IdempotencyKey = None,
    ) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "application/json")
        encoding = request.headers.get("content-encoding", "")
        schema = await repository.get_schema(rt.db, dataset)
        # parsed and validated on a worker thread (pyarrow and orjson release the GIL for the bulk of it)
        parsed, result = await off_loop(len(body), _read, body, content_type, encoding, schema, settings)
        await limit.charge(principal.name, parsed.count)  # every row costs, accepted or not
        if mode == "strict" and result.rejected:
            first = result.rejected[0]
            raise ValidationFailed(
                f"row {first.row}: {first.reason}"
                + (f" (and {len(result.rejected) - 1} more rows)" if len(result.rejected) > 1 else ""),
                row=first.row,
                field=first.field,
                rejections=[{"row": r.row, "field": r.field, "reason": r.reason} for r in result.rejected[:100]],
            )
        request_print = await off_loop(len(body), fingerprint, principal.name, dataset, mode, content_type, body)
        async with rt.db.acquire() as conn, conn.transaction(), repository.discard_on_error(rt.store) as written:
            if key is not None and (replay := await idempotency.claim(conn, RECORDS_SCOPE, key, request_print)):
                return replay.response()
            saved = await repository.store_submission(
                conn, rt.store, dataset=dataset, result=result, source="http", principal=principal.name,
                trusted=principal.trusted, written=written,
            )  # fmt: skip
            answer = SubmissionOut(
                dataset=dataset,
                submission_id=str(saved.submission_id),
                received=parsed.count,
                accepted=saved.accepted,
                rejected=saved.rejected,
                version=saved.version,
                total_rows=saved.total_rows,
                rejections=[RejectionOut(row=r.row, field=r.field, reason=r.reason) for r in saved.rejections[:100]],
            ).model_dump_json()
            if key is not None:
                await idempotency.remember(conn, RECORDS_SCOPE, key, 200, answer.encode())
        if stored is not None and saved.version is not None:
            stored.set()
        return Response(answer, media_type="application/json")

    @router.get("/{dataset}/rejections", summary="Rejected rows with their reasons, newest first",
                dependencies=[require(Role.READER)])  # fmt: skip
    async def rejections(
        dataset: DatasetName,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before_id: Annotated[
            int | None, Query(ge=1, le=INT8_MAX, description="Page: rejections older than this id")
        ] = None,
    ) -> dict[str, Any]:
        return await repository.rejections(rt.db, dataset, before_id, limit)

    app.include_router(router)


def _read(
    body: bytes, content_type: str, encoding: str, schema: DatasetSchema, settings: IngestSettings
) -> tuple[ParsedBody, ValidationResult]:
    parsed = parse_body(body, content_type, content_encoding=encoding, max_decoded=settings.max_decoded_bytes)
    if parsed.count > settings.max_rows_per_request:
        raise BadRequest(f"{parsed.count} records in one request; the limit is {settings.max_rows_per_request}")
    result = validate(
        schema, records=parsed.records, table=parsed.table, from_text=parsed.from_text, unreadable=parsed.unreadable
    )
    return parsed, result
