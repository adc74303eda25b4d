"""Every event on the bus, as a frozen pydantic model with one shared envelope.

Names are in the past tense: an event states a fact that has happened. Schemas
evolve by adding optional fields; a breaking change bumps ``schema_version`` of
the class and registers an upcaster (:func:`register_upcaster`) that rewrites
the older payload, so consumers only ever see the current shape.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from itertools import repeat
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from libs.common import topics
from libs.common.errors import InvalidEvent
from libs.common.schema import DatasetSchema


def _now() -> datetime:
    return datetime.now(UTC)


class ArtifactSignature(BaseModel):
    """The trainer's Ed25519 signature of an artifact's sha256 (libs/common/signing.py)."""

    model_config = ConfigDict(frozen=True)

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="First 16 hex digits of sha256(raw public key).")
    value: str = Field(max_length=200, description="Base64 Ed25519 signature of 'driftloop-artifact-v1:' + sha256.")


class ArtifactRef(BaseModel):
    """Where an artifact lives and the digest its bytes must match."""

    model_config = ConfigDict(frozen=True)

    uri: str = Field(description="URI of the artifact in the store.", examples=["file:///a/sha256/ab/ab12…"])
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the bytes.")
    size: int = Field(ge=0, description="Size in bytes.")
    signature: ArtifactSignature | None = Field(
        default=None, description="The trainer's signature of sha256; loaders refuse artifacts without a valid one."
    )


class OnnxExport(BaseModel):
    """The ONNX export of a version and whether it may serve in its pipeline's place.

    The trainer converts every pipeline it can and checks parity on the holdout:
    labels equal and probabilities (or regression outputs) within a tolerance.
    Serving runs the ONNX model only when ``parity`` is true; otherwise it runs the
    scikit-learn pipeline, and ``detail`` says why.
    """

    model_config = ConfigDict(frozen=True)

    artifact: ArtifactRef | None = Field(default=None, description="The ONNX model, when the export succeeded.")
    parity: bool = Field(default=False, description="Parity with the pipeline held on the holdout.")
    detail: str = Field(
        default="",
        description="What was checked, or why the export or parity failed.",
        examples=["labels equal on 4000 holdout rows, max |Δp| 7.1e-06"],
    )


class Source(BaseModel):
    """Who supplied part of the data behind a decision: a principal, its trust level, how much.

    Labels and training rows carry the principal that sent them (the authenticated
    caller of the HTTP API, or the upstream system's account on ``records.submitted``),
    so a retrain fed mostly by one untrusted caller can be held for a person.
    """

    model_config = ConfigDict(frozen=True)

    principal: str = Field(description="Who sent it.", examples=["upstream-crm"])
    trusted: bool = Field(description="Whether the principal's token is marked trusted.")
    count: int = Field(ge=0, description="How many labels or rows.")


def tally(items: Iterable[tuple[str, bool, int]]) -> list[Source]:
    """Sum ``(principal, trusted, count)`` triples into sources, the largest first."""
    totals: dict[tuple[str, bool], int] = {}
    for principal, trusted, count in items:
        totals[(principal, trusted)] = totals.get((principal, trusted), 0) + count
    ordered = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return [Source(principal=p, trusted=t, count=c) for (p, t), c in ordered if c]


class Event(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    #: The Kafka topic events of this class are published to.
    topic: ClassVar[str]
    #: The current schema version of the class; older payloads are upcast to it.
    current_version: ClassVar[int] = 1

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Unique id; consumers dedupe on it.")
    event_type: str = Field(description="Which event this is; selects the class.")
    schema_version: int = Field(default=1, ge=1, description="Version of this event type's schema.")
    occurred_at: datetime = Field(default_factory=_now, description="When the fact happened (UTC).")
    producer: str = Field(description="Service that emitted the event.", examples=["ingest"])
    correlation_id: str | None = Field(
        default=None, description="Ties together the events of one chain (a batch and what it caused)."
    )

    def key(self) -> bytes:
        """The Kafka key: events about one thing stay in order on one partition.

        Concrete events key by what they are about (dataset, model); the
        envelope's fallback spreads keyless events evenly.
        """
        return str(self.event_id).encode()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


ARROW_STREAM = "application/vnd.apache.arrow.stream"
"""The media type of the ``arrow`` payload of :class:`RecordsSubmitted`: an Arrow IPC stream."""


def _base64_in(value: Any) -> Any:
    """Text from JSON is base64 (strict: a stray character is an error, not skipped); bytes pass as they are."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not valid base64: {exc}") from exc
    return value


ArrowPayload = Annotated[
    bytes,
    BeforeValidator(_base64_in),
    PlainSerializer(lambda data: base64.b64encode(data).decode(), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "contentMediaType": ARROW_STREAM}),
]


class RecordsSubmitted(Event):
    """Raw records pushed by an upstream system that does not use HTTP.

    The rows come either as JSON objects (``records``) or as one Arrow IPC stream
    (``arrow``, base64 in the JSON envelope): exactly one of the two. Both are
    judged by the same rules as the HTTP records route (an Arrow stream like a
    ``application/vnd.apache.arrow.stream`` body), and both may be mixed on the
    topic: ingest stores one dataset version per dataset per micro-batch either way.
    """

    topic: ClassVar[str] = topics.RECORDS_SUBMITTED
    event_type: Literal["records.submitted"] = "records.submitted"
    dataset: str = Field(description="Dataset the records belong to.")
    entity_id: str | None = Field(default=None, description="Upstream entity; the message key.")
    records: list[dict[str, Any]] | None = Field(
        default=None, min_length=1, description="Rows as column → value (or send ``arrow`` instead)."
    )
    arrow: ArrowPayload | None = Field(
        default=None,
        description="Rows as an Arrow IPC stream (application/vnd.apache.arrow.stream), base64 in JSON; buffers "
        "may be LZ4 or ZSTD compressed. Sent instead of ``records``; libs/common/arrow_records.py builds such "
        "events from a table.",
        examples=["/////3gAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIA…"],
    )
    principal: str | None = Field(
        default=None, description="The upstream system's account; only it may write this topic (Kafka ACLs)."
    )

    @model_validator(mode="after")
    def _one_payload(self) -> RecordsSubmitted:
        if (self.records is None) == (self.arrow is None):
            raise ValueError(
                "send exactly one of 'records' (a JSON list of rows) and 'arrow' (an Arrow IPC stream, base64), "
                + ("not both" if self.records is not None else "got neither")
            )
        if self.arrow is not None and not self.arrow:
            raise ValueError("'arrow' is empty: it must hold an Arrow IPC stream")
        return self

    def key(self) -> bytes:
        return (self.entity_id or self.dataset).encode()


class DataArrived(Event):
    """A validated batch is stored and a new dataset version exists."""

    topic: ClassVar[str] = topics.DATA_ARRIVED
    event_type: Literal["data.arrived"] = "data.arrived"
    dataset: str
    version: int = Field(ge=1, description="Dataset version: every accepted batch up to this one.")
    batch: ArtifactRef = Field(description="The batch's Parquet file.")
    manifest: ArtifactRef = Field(description="Manifest of the batches making up this version.")
    rows_accepted: int = Field(ge=0)
    rows_rejected: int = Field(ge=0)
    total_rows: int = Field(ge=0, description="Rows in the whole version.")
    dataset_schema: DatasetSchema
    principal: str | None = Field(default=None, description="Who sent the batch's rows.")
    trusted: bool | None = Field(default=None, description="Whether that principal is trusted.")

    def key(self) -> bytes:
        return self.dataset.encode()


class TrainingRequested(Event):
    """Someone (a person, the CLI or the monitor) asked for a retrain."""

    topic: ClassVar[str] = topics.TRAINING_REQUESTED
    event_type: Literal["training.requested"] = "training.requested"
    model: str
    dataset: str
    reason: str = Field(default="requested", description="Why; shown in the audit trail.")
    requested_by: str = Field(default="unknown")
    dataset_version: int | None = Field(default=None, description="Pin a version; latest when unset.")

    def key(self) -> bytes:
        return self.model.encode()


class PairedComparison(BaseModel):
    """The challenger against the champion row by row on the same holdout rows: is its lead real?

    Both models predict the same rows, so the comparison is paired, and far more sensitive than
    comparing two accuracies: only the rows where they differ carry evidence.
    """

    model_config = ConfigDict(frozen=True)

    test: str = Field(
        description="'mcnemar' (exact, on the rows exactly one of the two gets right) for classification, "
        "'paired_t' (one-sided t-test on the differences of squared errors) for regression.",
        examples=["mcnemar", "paired_t"],
    )
    rows: int = Field(ge=0, description="Holdout rows both were scored on.")
    p_value: float = Field(
        ge=0, le=1, description="One-sided: the chance of a lead at least this large were the challenger no better."
    )
    loss_difference: float = Field(
        description="The champion's mean loss (0/1 error, squared error) minus the challenger's: positive, the "
        "challenger errs less."
    )
    chosen_among: int = Field(
        default=1, ge=1, description="How many models the same holdout chose the challenger from; p_value is "
        "already multiplied by it (Bonferroni), since the best of several looks better there than it is."
    )  # fmt: skip


class Rejudgement(BaseModel):
    """A challenger re-scored against a newer champion on the challenger's own holdout."""

    model_config = ConfigDict(frozen=True)

    stale_champion_version: int | None = Field(description="The champion the first comparison was made with.")
    stale_champion_metrics: dict[str, float] | None = Field(default=None, description="Its figures then.")
    champion_version: int = Field(description="The champion at re-judgement time.")
    champion_metrics: dict[str, float] = Field(description="The current champion on the same holdout.")
    metrics: dict[str, float] = Field(description="The challenger on the same holdout.")
    fairness: dict[str, float] | None = Field(default=None, description="The challenger's group differences.")
    champion_fairness: dict[str, float] | None = Field(
        default=None, description="The current champion's group differences on the same holdout."
    )
    comparison: PairedComparison | None = Field(
        default=None, description="The paired test of the two on the same holdout rows (None: not made)."
    )


class Cards(BaseModel):
    """A version's model card and data card, each as Markdown and as JSON (see docs/cards.md)."""

    model_config = ConfigDict(frozen=True)

    model_markdown: ArtifactRef
    model_json: ArtifactRef
    data_markdown: ArtifactRef
    data_json: ArtifactRef


class ModelTrained(Event):
    """A candidate version is trained, evaluated and stored."""

    topic: ClassVar[str] = topics.MODEL_TRAINED
    event_type: Literal["model.trained"] = "model.trained"
    model: str
    dataset: str
    dataset_version: int = Field(ge=1)
    job_id: str
    trigger: str = Field(description="What started the job: new_data, drift or request.")
    trigger_event_id: uuid.UUID | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="Chosen hyperparameters.")
    metrics: dict[str, float] = Field(description="Challenger metrics on the holdout.")
    champion_metrics: dict[str, float] | None = Field(
        default=None, description="The champion's metrics on the same holdout, if one existed."
    )
    champion_version: int | None = None
    primary_metric: str = Field(description="The metric promotion compares, higher is better.")
    seed: int
    code_version: str
    training_rows: int = Field(ge=0)
    artifact: ArtifactRef = Field(description="The fitted pipeline (skops).")
    profile: ArtifactRef = Field(description="Reference profile of the training data.")
    onnx: OnnxExport | None = Field(
        default=None,
        description="The ONNX export and its parity check; None when it follows as model.exported.",
    )
    dataset_schema: DatasetSchema
    row_sources: list[Source] | None = Field(
        default=None, description="Who supplied the training rows (None: not recorded)."
    )
    holdout: ArtifactRef | None = Field(
        default=None,
        description="The holdout rows (Parquet) both models were scored on: a stale comparison is re-run on them.",
    )
    rejudged: Rejudgement | None = Field(
        default=None,
        description="Set when the champion changed while the job trained: champion_* then hold the re-judgement.",
    )
    fairness: dict[str, float] | None = Field(
        default=None,
        description="Group differences on the holdout per declared sensitive feature, lower is fairer "
        "(None: no sensitive feature declared).",
        examples=[{"demographic_parity_difference:sex": 0.04, "equalized_odds_difference:sex": 0.06}],
    )
    champion_fairness: dict[str, float] | None = Field(
        default=None, description="The champion's group differences on the same holdout."
    )
    comparison: PairedComparison | None = Field(
        default=None,
        description="The paired test of challenger and champion on the same holdout rows (None: no champion was "
        "compared); with ``rejudged`` set, the re-judgement's.",
    )
    cards: Cards | None = Field(default=None, description="The model and data cards (None: see card_error).")
    card_error: str | None = Field(default=None, description="Why the cards are missing, when they are.")

    def key(self) -> bytes:
        return self.model.encode()


class ModelExported(Event):
    """A trained version's ONNX export and its parity check, done after ``model.trained``.

    The export runs once the pipeline is published so that a new version serves
    (on scikit-learn) without waiting for it; serving switches the version to
    onnxruntime when this event says parity held.
    """

    topic: ClassVar[str] = topics.MODEL_EXPORTED
    event_type: Literal["model.exported"] = "model.exported"
    model: str
    job_id: str = Field(description="The job that trained the version (names it before the registry numbers it).")
    artifact: ArtifactRef = Field(description="The pipeline the export was made from.")
    onnx: OnnxExport

    def key(self) -> bytes:
        return self.model.encode()


class RejudgementRequested(Event):
    """The registry asks for a version to be re-scored against the current champion on its holdout."""

    topic: ClassVar[str] = topics.REJUDGEMENT_REQUESTED
    event_type: Literal["rejudgement.requested"] = "rejudgement.requested"
    model: str
    version: int = Field(ge=1, description="The registered version awaiting its verdict.")
    dataset: str
    artifact: ArtifactRef = Field(description="The challenger's pipeline.")
    holdout: ArtifactRef = Field(description="The challenger's holdout rows.")
    dataset_schema: DatasetSchema
    stale_champion_version: int | None = Field(default=None, description="The champion it was compared with.")
    stale_champion_metrics: dict[str, float] | None = Field(default=None, description="That champion's figures.")

    def key(self) -> bytes:
        return self.model.encode()


class ModelRejudged(Event):
    """A registered version re-scored, on its own holdout, against the champion the trainer knows now."""

    topic: ClassVar[str] = topics.MODEL_REJUDGED
    event_type: Literal["model.rejudged"] = "model.rejudged"
    model: str
    version: int = Field(ge=1)
    rejudgement: Rejudgement

    def key(self) -> bytes:
        return self.model.encode()


class AliasMove(BaseModel):
    model_config = ConfigDict(frozen=True)

    alias: str = Field(examples=["champion", "canary", "shadow"])
    from_version: int | None
    to_version: int | None


class ModelPromoted(Event):
    """An alias of a model moved to a version (or was cleared)."""

    topic: ClassVar[str] = topics.MODEL_PROMOTED
    event_type: Literal["model.promoted"] = "model.promoted"
    model: str
    version: int = Field(ge=1)
    dataset: str | None = Field(default=None, description="Dataset the version was trained on.")
    move: AliasMove
    artifact: ArtifactRef
    profile: ArtifactRef
    onnx: OnnxExport | None = Field(default=None, description="The version's ONNX export, if it has one.")
    dataset_schema: DatasetSchema
    metrics: dict[str, float] = Field(default_factory=dict)
    reason: str
    actor: str = Field(description="Who moved it: 'policy' or a person's name.")
    share: float | None = Field(
        default=None, ge=0, le=100,
        description="For the canary alias: the percentage of the model's traffic it takes (serving splits by it).",
    )  # fmt: skip
    judged: bool | None = Field(
        default=None,
        description="For the canary alias: whether the registry's canary policy decides its fate (False: an A/B "
        "test with a fixed share, ended by a person).",
    )

    def key(self) -> bytes:
        return self.model.encode()


class ModelCompared(Event):
    """The monitor's live comparison of a canary (or shadow) with the champion, on the labels each received."""

    topic: ClassVar[str] = topics.MODEL_COMPARED
    event_type: Literal["model.compared"] = "model.compared"
    model: str
    alias: str = Field(description="The challenger's alias: canary or shadow.", examples=["canary"])
    version: int = Field(ge=1, description="The challenger.")
    champion_version: int = Field(ge=1)
    metric: str = Field(description="accuracy (classification) or mse (regression).")
    challenger_labels: int = Field(ge=0)
    champion_labels: int = Field(ge=0)
    challenger_value: float
    champion_value: float
    difference: float = Field(description="Positive: the challenger is better (for mse, champion minus challenger).")
    lower: float = Field(description="Lower bound of the 95 % interval on the difference.")
    upper: float = Field(description="Upper bound of the 95 % interval on the difference.")
    method: str = Field(description="How the interval was computed.", examples=["newcombe-wilson-95"])

    def key(self) -> bytes:
        return self.model.encode()


class PredictionRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    request_id: str
    features: dict[str, Any]
    prediction: Any
    probabilities: dict[str, float] | None = None
    at: datetime = Field(default_factory=_now)


class PredictionsLogged(Event):
    """A batch of predictions served by one model version.

    Schema version 2 adds a second wire form of the same batch: instead of ``records``, a producer may
    send ``columns`` (see :func:`records_from_columns`), one list per field and per feature. Serving
    does: building a record per row (a dict of features inside a dict per prediction) cost it more
    CPU than answering the request, on the event loop every response shares. The records are built
    here, where the event is read, so consumers see ``records`` either way.
    """

    topic: ClassVar[str] = topics.PREDICTIONS_LOGGED
    current_version: ClassVar[int] = 2
    event_type: Literal["predictions.logged"] = "predictions.logged"
    schema_version: int = Field(default=2, ge=1, description="Version of this event type's schema.")
    model: str
    version: int = Field(ge=1)
    records: list[PredictionRecord] = Field(min_length=1)
    shadow: bool = Field(
        default=False,
        description="Predictions of the shadow version on copies of requests the champion answered (same request "
        "ids); never returned to a caller.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_columns(cls, data: Any) -> Any:
        if isinstance(data, dict) and "records" not in data and "columns" in data:
            return {**data, "records": records_from_columns(data["columns"])}
        return data

    def key(self) -> bytes:
        return self.model.encode()


def records_from_columns(columns: Any) -> list[dict[str, Any]]:
    """The records of ``predictions.logged``'s columnar form, one per row.

    ``columns`` is ``{"request_ids": [...], "at": [...], "predictions": [...], "features": {name: [...]},
    "probabilities": {class: [...]} or null}``, every list holding one value per row, in row order
    (``at`` may also be one time for every row). A list of another length is refused (ValueError),
    so a malformed batch fails validation rather than pairing values with the wrong rows.
    """
    if not isinstance(columns, dict) or not isinstance(columns.get("request_ids"), list):
        raise ValueError("columns: expected an object with a list of request_ids")
    rows = len(columns["request_ids"])
    at = columns.get("at")
    times = at if isinstance(at, list) else [at] * rows
    features = columns.get("features")
    probabilities = columns.get("probabilities")
    if not isinstance(features, dict) or not (probabilities is None or isinstance(probabilities, dict)):
        raise ValueError("columns: features (and probabilities, unless null) must be objects of lists")
    lists = {"at": times, "predictions": columns.get("predictions")}
    lists |= {f"features.{name}": values for name, values in features.items()}
    lists |= {f"probabilities.{name}": values for name, values in (probabilities or {}).items()}
    for where, values in lists.items():
        if not isinstance(values, list) or len(values) != rows:
            raise ValueError(f"columns.{where}: expected a list of {rows} values, one per request id")
    names, classes = list(features), list(probabilities or ())
    by_row = zip(*features.values(), strict=True) if names else repeat((), rows)
    rows_features = [dict(zip(names, values, strict=True)) for values in by_row]
    rows_probabilities = (
        [dict(zip(classes, values, strict=True)) for values in zip(*probabilities.values(), strict=True)]
        if probabilities else [None] * rows
    )  # fmt: skip
    return [
        {"request_id": request_id, "features": row, "prediction": prediction, "probabilities": probs, "at": when}
        for request_id, row, prediction, probs, when in zip(
            columns["request_ids"], rows_features, columns["predictions"], rows_probabilities, times, strict=True
        )
    ]


class Label(BaseModel):
    model_config = ConfigDict(frozen=True)

    request_id: str
    label: Any
    attributes: dict[str, Any] | None = Field(
        default=None,
        description="Sensitive attributes of the labelled case that are not model inputs (declared in the dataset "
        "schema), sent with the label so the monitor can compute live group metrics; never given to the model.",
        examples=[{"sex": "f"}],
    )


class LabelsArrived(Event):
    """Ground truth for earlier predictions."""

    topic: ClassVar[str] = topics.LABELS_ARRIVED
    event_type: Literal["labels.arrived"] = "labels.arrived"
    model: str
    labels: list[Label] = Field(min_length=1)
    principal: str | None = Field(default=None, description="The authenticated caller who sent the labels.")
    trusted: bool | None = Field(default=None, description="Whether that caller's token is trusted.")
    attestation: str | None = Field(
        default=None,
        description="Serving's MAC over the model, the sender, its trust and the labels (libs/common/request_ids.py): "
        "proof that serving checked them; the monitor refuses labels without it when it holds serving's key.",
    )

    def attested_labels(self) -> list[tuple[Any, ...]]:
        """What serving's attestation covers per label: (request id, label), and the sensitive attributes
        when a label carries them (so a writer on the topic cannot move a label to another group)."""
        return [(i.request_id, i.label) if i.attributes is None else (i.request_id, i.label, i.attributes)
                for i in self.labels]  # fmt: skip

    def key(self) -> bytes:
        return self.model.encode()


class FeatureDrift(BaseModel):
    model_config = ConfigDict(frozen=True)

    feature: str
    statistics: dict[str, float] = Field(description="Statistic name → value (psi, ks_pvalue …).")
    thresholds: dict[str, float] = Field(default_factory=dict)
    drifted: bool


class DriftDetected(Event):
    """Drift or degradation judged significant for a model version."""

    topic: ClassVar[str] = topics.DRIFT_DETECTED
    event_type: Literal["drift.detected"] = "drift.detected"
    model: str
    version: int = Field(ge=1)
    dataset: str | None = Field(default=None, description="Dataset of the model, when known.")
    kinds: list[str] = Field(description="data_drift, prediction_drift and/or performance.")
    window_size: int = Field(ge=0)
    window_started_at: datetime | None = None
    features: list[FeatureDrift] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict, description="Live metrics of the window.")
    summary: str
    label_sources: list[Source] | None = Field(
        default=None, description="Who supplied the labels behind the live metric (None: not recorded)."
    )

    def key(self) -> bytes:
        return self.model.encode()


class BatchCompleted(Event):
    """A batch prediction job ended: every input row predicted into one Parquet artifact, failed for good, or
    was cancelled."""

    topic: ClassVar[str] = topics.BATCH_COMPLETED
    event_type: Literal["batch.completed"] = "batch.completed"
    job_id: str = Field(description="The batch job (GET /v1/batch-jobs/{id} on the trainer).")
    model: str
    version: int = Field(ge=1, description="The version that predicted (an alias is resolved at submission).")
    status: Literal["succeeded", "failed", "cancelled"] = Field(
        description="cancelled: through the API (POST /v1/batch-jobs/{id}/cancel); error says who and why."
    )
    rows: int = Field(ge=0, description="Rows predicted.")
    dataset: str | None = Field(default=None, description="The input dataset, when the input was a dataset version.")
    dataset_version: int | None = Field(default=None, ge=1)
    upload: ArtifactRef | None = Field(default=None, description="The uploaded Parquet input, when one was sent.")
    output: ArtifactRef | None = Field(
        default=None, description="The predictions (Parquet: row_id, prediction, one probability column per class)."
    )
    error: str | None = Field(default=None, description="Why it failed.")
    seconds: float = Field(ge=0, description="From the first claim of the job to its end.")

    def key(self) -> bytes:
        return self.model.encode()


EVENT_CLASSES: dict[str, type[Event]] = {
    cls.model_fields["event_type"].default: cls
    for cls in (
        RecordsSubmitted,
        DataArrived,
        TrainingRequested,
        RejudgementRequested,
        ModelTrained,
        ModelExported,
        ModelRejudged,
        ModelPromoted,
        ModelCompared,
        PredictionsLogged,
        LabelsArrived,
        DriftDetected,
        BatchCompleted,
    )
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register_upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function rewriting a ``from_version`` payload into ``from_version + 1``.

    Chained upcasters bring any old payload to the class's ``current_version``::

        @register_upcaster("data.arrived", 1)
        def upcast_v1_v2(payload): return {**payload, "schema_version": 2, ...}
    """

    def decorate(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return decorate


@register_upcaster("predictions.logged", 1)
def _predictions_logged_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 carried ``records`` only, which version 2 still reads as they are."""
    return payload


def parse_event(raw: bytes | str | dict[str, Any], expected: tuple[type[Event], ...] = ()) -> Event:
    """Decode, upcast and validate an event; raise :class:`InvalidEvent` with the cause.

    ``expected`` limits which classes are acceptable (a topic's consumer rejects
    events that do not belong on it).
    """
    try:
        payload = raw if isinstance(raw, dict) else json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"message is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidEvent(f"event must be a JSON object, got {type(payload).__name__}")
    event_type = payload.get("event_type")
    if not isinstance(event_type, str) or event_type not in EVENT_CLASSES:
        raise InvalidEvent(f"unknown event_type {event_type!r}")
    cls = EVENT_CLASSES[event_type]
    if expected and cls not in expected:
        names = sorted(c.model_fields["event_type"].default for c in expected)
        raise InvalidEvent(f"event_type {event_type!r} does not belong here (expected {names})")
    payload = _upcast(payload, event_type, cls.current_version)
    try:
        return cls.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise InvalidEvent(f"invalid {event_type}: {problems}") from exc


def _upcast(payload: dict[str, Any], event_type: str, target: int) -> dict[str, Any]:
    version = payload.get("schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise InvalidEvent(f"schema_version must be a positive integer, got {version!r}")
    if version > target:
        raise InvalidEvent(f"{event_type} schema_version {version} is newer than this consumer ({target})")
    while version < target:
        upcaster = _UPCASTERS.get((event_type, version))
        if upcaster is None:
            raise InvalidEvent(f"no upcaster for {event_type} v{version} → v{version + 1}")
        payload = upcaster(payload)
        version += 1
        payload["schema_version"] = version
    return payload
