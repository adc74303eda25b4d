"""HTTP API of the ingest service."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from libs.common import idempotency
from libs.common.auth import Principal, Role, require
from libs.common.errors import BadRequest, Conflict, NotFound, ValidationFailed
from libs.common.http import INT4_MAX, INT8_MAX, errors
from libs.common.idempotency import IdempotencyKey, fingerprint
from libs.common.jsonbody import off_loop
from libs.common.ratelimit import RateLimit
from libs.common.schema import DatasetSchema
from libs.common.service import Runtime
from services.ingest.adapters import repository
from services.ingest.domain.parsing import ParsedBody, parse_body
from services.ingest.domain.validation import ValidationResult, validate_records
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
        '{"records": [...]}, NDJSON (application/x-ndjson) and CSV with a header line (text/csv).',
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


def mount(app: FastAPI, rt: Runtime, settings: IngestSettings) -> None:
    limit = RateLimit("records", settings.records_rate_per_s, settings.records_burst)
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
        async with rt.db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT schema, last_version FROM datasets WHERE name = $1 FOR UPDATE", dataset)
            if row is None:
                await conn.execute("INSERT INTO datasets (name, schema) VALUES ($1, $2)", dataset, text)
                return _declared(dataset, text, created=True)
            current = await repository.parse_schema(row["schema"])
            if current != schema:
                if row["last_version"] > 0:
                    raise Conflict(
                        f"dataset {dataset!r} already has data under a different schema; declare a new dataset",
                        dataset=dataset,
                    )
                await conn.execute("UPDATE datasets SET schema = $2, updated_at = now() WHERE name = $1", dataset, text)
        return _declared(dataset, text, created=False)

    @router.get("", summary="List datasets", dependencies=[require(Role.READER)])
    async def list_datasets() -> list[dict[str, Any]]:
        rows = await rt.db.fetch("SELECT name, last_version, total_rows, created_at FROM datasets ORDER BY name")
        return [{"dataset": r["name"], "version": r["last_version"], "total_rows": r["total_rows"]} for r in rows]

    @router.get("/{dataset}", summary="A dataset: schema, latest version and submission counts",
                dependencies=[require(Role.READER)])  # fmt: skip
    async def show(dataset: DatasetName) -> dict[str, Any]:
        schema = await repository.get_schema(rt.db, dataset)
        head = await rt.db.fetchrow("SELECT last_version, total_rows FROM datasets WHERE name = $1", dataset)
        counts = await rt.db.fetchrow(
            "SELECT coalesce(sum(received), 0) AS received, coalesce(sum(accepted), 0) AS accepted, "
            "coalesce(sum(rejected), 0) AS rejected FROM submissions WHERE dataset = $1",
            dataset,
        )
        if head is None or counts is None:  # deleted between the two reads
            raise NotFound(f"dataset {dataset!r} is not declared")
        return {
            "dataset": dataset,
            "schema": schema.model_dump(mode="json"),
            "version": head["last_version"],
            "total_rows": head["total_rows"],
            "records": {"received": counts["received"], "accepted": counts["accepted"], "rejected": counts["rejected"]},
        }

    @router.get("/{dataset}/versions/{version}", summary="The manifest of one dataset version",
                dependencies=[require(Role.READER)])  # fmt: skip
    async def version(dataset: DatasetName, version: VersionNumber) -> dict[str, Any]:
        row = await rt.db.fetchrow(
            "SELECT manifest_uri, manifest_sha256, manifest_size, total_rows, rows, created_at FROM versions "
            "WHERE dataset = $1 AND version = $2",
            dataset,
            version,
        )
        if row is None:
            raise NotFound(f"dataset {dataset!r} has no version {version}")
        return {
            "dataset": dataset,
            "version": version,
            "manifest": {"uri": row["manifest_uri"], "sha256": row["manifest_sha256"], "size": row["manifest_size"]},
            "batch_rows": row["rows"],
            "total_rows": row["total_rows"],
            "created_at": row["created_at"].isoformat(),
        }

    @router.post(
        "/{dataset}/records", response_model=SubmissionOut, responses=errors(409, 415),
        summary="Submit records: JSON array, NDJSON or CSV", openapi_extra=_RECORDS_BODY,
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
        schema = await repository.get_schema(rt.db, dataset)
        # a large batch is parsed and validated off the event loop
        parsed, result = await off_loop(len(body), _read, body, content_type, schema, settings.max_rows_per_request)
        limit.charge(principal.name, len(parsed.rows))  # every row costs, accepted or not
        if mode == "strict" and result.rejected:
            first = result.rejected[0]
            raise ValidationFailed(
                f"row {first.row}: {first.reason}"
                + (f" (and {len(result.rejected) - 1} more rows)" if len(result.rejected) > 1 else ""),
                row=first.row,
                field=first.field,
                rejections=[{"row": r.row, "field": r.field, "reason": r.reason} for r in result.rejected[:100]],
            )
        request_print = fingerprint(principal.name, dataset, mode, content_type, body)
        async with rt.db.acquire() as conn, conn.transaction(), repository.discard_on_error(rt.store) as written:
            if key is not None and (replay := await idempotency.claim(conn, RECORDS_SCOPE, key, request_print)):
                return replay.response()
            stored = await repository.store_submission(
                conn, rt.store, dataset=dataset, accepted=result.accepted, rejected=result.rejected, source="http",
                principal=principal.name, trusted=principal.trusted, written=written, keys=result.keys,
            )  # fmt: skip
            answer = SubmissionOut(
                dataset=dataset,
                submission_id=str(stored.submission_id),
                received=len(parsed.rows),
                accepted=stored.accepted,
                rejected=stored.rejected,
                version=stored.version,
                total_rows=stored.total_rows,
                rejections=[RejectionOut(row=r.row, field=r.field, reason=r.reason) for r in stored.rejections[:100]],
            ).model_dump_json()
            if key is not None:
                await idempotency.remember(conn, RECORDS_SCOPE, key, 200, answer.encode())
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
        await repository.get_schema(rt.db, dataset)
        rows = await rt.db.fetch(
            "SELECT id, submission_id, row_index, field, reason, record, created_at FROM rejections "
            "WHERE dataset = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            dataset,
            before_id,
            limit,
        )
        total = await rt.db.fetchval("SELECT count(*) FROM rejections WHERE dataset = $1", dataset)
        return {
            "dataset": dataset,
            "total": total,
            "rejections": [
                {
                    "id": r["id"],
                    "submission_id": str(r["submission_id"]),
                    "row": r["row_index"],
                    "field": r["field"],
                    "reason": r["reason"],
                    "record": None if r["record"] is None else json.loads(r["record"]),
                    "at": r["created_at"].isoformat(),
                }
                for r in rows
            ],
        }

    app.include_router(router)


def _read(body: bytes, content_type: str, schema: DatasetSchema, max_rows: int) -> tuple[ParsedBody, ValidationResult]:
    parsed = parse_body(body, content_type)
    if len(parsed.rows) > max_rows:
        raise BadRequest(f"{len(parsed.rows)} records in one request; the limit is {max_rows}")
    return parsed, validate_records(schema, parsed.rows, from_text=parsed.from_text, unreadable=parsed.unreadable)
