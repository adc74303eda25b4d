"""Settings of the ingest service (``DRIFTLOOP_INGEST_*``)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.service import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_INGEST_", extra="ignore")

    port: int = 8001
    micro_batch_records: int = Field(default=2000, ge=1)
    """records.submitted: store a batch once this many records (messages) are buffered …"""
    micro_batch_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    """… or once their messages take this many bytes as received (the message that reaches it is the
    last; the events' rows once read are bounded by ``micro_batch_submission_rows`` and ``_bytes``) …"""
    micro_batch_wait_s: float = Field(default=2.0, gt=0)
    """… or this long after the first one arrived."""
    micro_batch_submission_rows: int | None = Field(default=None, ge=1)
    """records.submitted: most rows one stored submission (dataset version) of a micro-batch holds. One
    dataset's events past it start the next submission (in order, each its own transaction), so memory
    holds one submission's rows and one event's, not the micro-batch's. Default: ``max_rows_per_request``."""
    micro_batch_submission_bytes: int | None = Field(default=None, ge=1024)
    """… and most bytes its rows take once read (Arrow buffers decompressed; a JSON record counts 256).
    Default: ``max_decoded_bytes``. An event larger than either cap alone is a submission of its own."""
    max_rows_per_request: int = Field(default=1_000_000, ge=1)
    """Largest number of records one HTTP request (or one records.submitted event) may carry. A 10 MiB
    body, the default ``max_body_bytes``, holds about 180,000 CSV rows of 9 features, and a Parquet body
    several times more; the memory a request may take is bounded by ``max_decoded_bytes``."""
    max_decoded_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """Most bytes a body may expand to once decompressed (Content-Encoding, compressed Arrow or Parquet
    buffers); past it the request gets 413. The body as sent is bounded by ``max_body_bytes``."""
    records_rate_per_s: float = Field(default=1_000_000.0, gt=0)
    """Rows per second one principal may post (token bucket; a row costs one token) …"""
    records_burst: float = Field(default=2_000_000.0, gt=0)
    """… with bursts up to this many rows. Over it: 429 with Retry-After. The defaults are above what one
    replica ingests on two cores (about 500,000 to 900,000 rows/s, ``make bench-ingest``), so a producer
    is held back by the service's capacity, not by a limit, until an operator sets one for a principal
    it does not trust (a request larger than the burst still passes once the bucket is full)."""
    compact_interval_s: float = Field(default=2.0, ge=0)
    """How often the background compactor looks for runs of small segments (0: never)."""
    compact_small_rows: int = Field(default=50_000, ge=1)
    """A segment with fewer rows than this is small …"""
    compact_min_run: int = Field(default=8, ge=2)
    """… and this many consecutive small ones (one sender) are merged into one Parquet file."""
    compact_quiet_s: float = Field(default=0.25, ge=0)
    """A compaction round waits until no submission was stored for this long (0: it runs at once) …"""
    compact_max_deferred: int = Field(default=16, ge=1)
    """… but never past this many submissions in a row: under a stream that never pauses it runs every
    this many (a manifest then lists at most this many segments more than a compacted history would)."""
    switch_interval_s: float = Field(default=0.001, gt=0, le=0.1)
    """How long a thread may hold the GIL while another waits (``sys.setswitchinterval``) in
    ``python -m services.ingest``: short, so request validation on worker threads does not hold up
    the event loop (and ``/healthz``) for the default 5 ms at each hand-over."""
