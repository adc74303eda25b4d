"""HTTP API of the ingest service."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

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
from services.ingest.adapters.compaction import Submissions
from services.ingest.api_models import (
    DatasetListed,
    DatasetSummary,
    DeclaredOut,
    RejectionOut,
    RejectionsPage,
    SubmissionOut,
    VersionOut,
)
from services.ingest.domain.parsing import ParsedBody, parse_body
from services.ingest.domain.validation import RejectedRows, ValidationResult, validate
from services.ingest.settings import IngestSettings

RECORDS_SCOPE = "ingest.records"
DatasetName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Dataset name.")]
VersionNumber = Annotated[int, Path(ge=0, le=INT4_MAX, description="Dataset version.")]


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
        "stream (application/vnd.apache.arrow.stream), an Arrow IPC file (application/vnd.apache.arrow.file, "
        "or under the stream type: told by its ARROW1 magic) and Parquet (application/vnd.apache.parquet), each "
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


def mount(app: FastAPI, rt: Runtime, settings: IngestSettings, stored: Submissions | None = None) -> None:
    """The dataset routes; ``stored`` is set after each submission that stored rows (the compactor waits on it)."""
    router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
    _mount_declare(router, rt)
    _mount_reads(router, rt)
    _mount_records(router, rt, settings, stored)
    app.include_router(router)


def _mount_declare(router: APIRouter, rt: Runtime) -> None:
    @router.put(
        "/{dataset}", status_code=201, response_model=DeclaredOut, summary="Declare (or confirm) a dataset's schema",
        openapi_extra=_SCHEMA_BODY,
        responses={**errors(400, 409), 200: {"model": DeclaredOut, "description": "Already declared: confirmed, or "
                                             "replaced while the dataset holds no data."}},
        dependencies=[require(Role.ADMIN)],
    )  # fmt: skip
    async def declare(dataset: DatasetName, request: Request) -> Response:
        # The body is read by hand so that a wide schema (10⁵ features, megabytes)
        # is parsed and validated off the event loop.
        schema, text = await off_loop(len(await request.body()), _parse_schema, await request.body())
        created = await repository.declare(rt.db, dataset, schema, text)
        return _declared(dataset, text, created=created)


def _mount_reads(router: APIRouter, rt: Runtime) -> None:
    @router.get("", summary="List datasets", dependencies=[require(Role.READER)])
    async def list_datasets() -> list[DatasetListed]:
        return [DatasetListed(**row) for row in await repository.list_datasets(rt.db)]

    @router.get("/{dataset}", summary="A dataset: schema, latest version and submission counts",
                responses=errors(404), dependencies=[require(Role.READER)])  # fmt: skip
    async def show(dataset: DatasetName) -> DatasetSummary:
        return DatasetSummary.model_validate(await repository.summary(rt.db, dataset))

    @router.get("/{dataset}/versions/{version}", summary="The manifest of one dataset version",
                responses=errors(404), dependencies=[require(Role.READER)])  # fmt: skip
    async def version(dataset: DatasetName, version: VersionNumber) -> VersionOut:
        return VersionOut.model_validate(await repository.version(rt.db, dataset, version))

    @router.get("/{dataset}/rejections", summary="Rejected rows with their reasons, newest first",
                responses=errors(404), dependencies=[require(Role.READER)])  # fmt: skip
    async def rejections(
        dataset: DatasetName,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before_id: Annotated[
            int | None, Query(ge=1, le=INT8_MAX, description="Page: rejections older than this id")
        ] = None,
    ) -> RejectionsPage:
        return RejectionsPage.model_validate(await repository.rejections(rt.db, dataset, before_id, limit))


def _mount_records(router: APIRouter, rt: Runtime, settings: IngestSettings, stored: Submissions | None) -> None:
    limit = RateLimit("records", settings.records_rate_per_s, settings.records_burst,
                      shared=lambda: rt.auth.db, installation=settings.kafka.topic_prefix)  # fmt: skip

    @router.post(
        "/{dataset}/records", response_model=SubmissionOut, responses=errors(400, 404, 409, 415, 429),
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
        body, content_type = await request.body(), request.headers.get("content-type", "application/json")
        claim = None
        if key is not None:  # a retry of a stored request gets its answer before the body is read again
            claim = (key, await off_loop(len(body), fingerprint, principal.name, dataset, mode, content_type, body))
            if (replay := await idempotency.answered(rt.db, RECORDS_SCOPE, *claim)) is not None:
                return replay.response()
        schema = await repository.get_schema(rt.db, dataset)
        # parsed and validated on a worker thread (pyarrow and orjson release the GIL for the bulk of it)
        encoding = request.headers.get("content-encoding", "")
        parsed, result = await off_loop(len(body), _read, body, content_type, encoding, schema, settings)
        await limit.charge(principal.name, parsed.count)  # every row costs, accepted or not
        if mode == "strict" and result.rejected:
            raise _all_or_nothing(result.rejected)
        answer, version = await _store(rt, dataset, principal, parsed.count, result, claim)
        if stored is not None and version is not None:
            stored.set()
        return answer


async def _store(
    rt: Runtime, dataset: str, principal: Principal, received: int, result: ValidationResult,
    claim: tuple[str, str] | None,
) -> tuple[Response, int | None]:  # fmt: skip
    """Store a submission (the answer, and the version it made) in one transaction with its idempotency
    key and request fingerprint (``claim``): a retry with the key gets the first answer and stores nothing."""
    async with rt.db.acquire() as conn, conn.transaction(), repository.discard_on_error(rt.store) as written:
        if claim is not None and (replay := await idempotency.claim(conn, RECORDS_SCOPE, *claim)):
            return replay.response(), None
        saved = await repository.store_submission(
            conn, rt.store, dataset=dataset, result=result, source="http", principal=principal.name,
            trusted=principal.trusted, written=written,
        )  # fmt: skip
        answer = _submitted(dataset, received, saved).model_dump_json()
        if claim is not None:
            await idempotency.remember(conn, RECORDS_SCOPE, claim[0], 200, answer.encode())
    return Response(answer, media_type="application/json"), saved.version


def _all_or_nothing(rejected: RejectedRows) -> ValidationFailed:
    """The refusal of a strict submission with rejected rows: the first named, up to 100 listed."""
    listed = rejected.listed(100)
    row, field, reason = listed[0]
    return ValidationFailed(
        f"row {row}: {reason}" + (f" (and {len(rejected) - 1} more rows)" if len(rejected) > 1 else ""),
        row=row,
        field=field,
        rejections=[{"row": r, "field": f, "reason": why} for r, f, why in listed],
    )


def _submitted(dataset: str, received: int, saved: repository.StoredSubmission) -> SubmissionOut:
    return SubmissionOut(
        dataset=dataset,
        submission_id=str(saved.submission_id),
        received=received,
        accepted=saved.accepted,
        rejected=saved.rejected,
        version=saved.version,
        total_rows=saved.total_rows,
        rejections=[RejectionOut(row=r, field=f, reason=why) for r, f, why in saved.rejections.listed(100)],
    )


def _read(
    body: bytes, content_type: str, encoding: str, schema: DatasetSchema, settings: IngestSettings
) -> tuple[ParsedBody, ValidationResult]:
    parsed = parse_body(body, content_type, content_encoding=encoding, max_decoded=settings.max_decoded_bytes,
                        max_rows=settings.max_rows_per_request)  # fmt: skip
    result = validate(
        schema, records=parsed.records, table=parsed.table, from_text=parsed.from_text, unreadable=parsed.unreadable
    )
    return parsed, result
