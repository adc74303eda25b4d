"""Settings of the serving service (``DRIFTLOOP_SERVING_*``)."""

import socket

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.common.service import ServiceSettings


class ServingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_SERVING_", extra="ignore")

    port: int = 8004
    registry_url: str = "http://127.0.0.1:8003"
    """Where the registry answers: champions are loaded from it at start."""
    registry_token: SecretStr | None = None
    """A ``reader`` token for the registry; when unset, serving issues itself a short-lived
    one in the shared token table at start (it can write there as every service can)."""
    instance_id: str = Field(default_factory=socket.gethostname)
    """This replica's name (in the principal of the registry token it issues itself)."""
    workers: int = Field(default=1, ge=1)
    """Serving processes on the port (``SO_REUSEPORT``, Linux): one event loop uses at most one core, so
    set it to the cores serving may use (services/serving/workers.py). Each worker is a whole replica."""
    reuse_port: bool = False
    """Listen with ``SO_REUSEPORT``; set for each worker by the supervisor (``workers`` > 1)."""
    max_instances: int = Field(default=1000, ge=1)
    """Most instances one predict request may carry."""
    log_batch_size: int = Field(default=200, ge=1)
    """predictions.logged: publish once this many predictions are buffered …"""
    log_flush_s: float = Field(default=1.0, gt=0)
    """… or this often, whichever comes first."""
    batching: bool = True
    """Micro-batching: gather concurrent requests for a model version into one inference call."""
    batch_max_rows: int = Field(default=256, ge=1)
    """A gathered batch is inferred once it holds this many rows …"""
    batch_max_wait_s: float = Field(default=0.001, gt=0, le=0.1)
    """… or once its first request has waited this long (it flushes sooner when no more requests come)."""
    hot_path: bool = True
    """Answer the predict routes in a lean ASGI handler in front of FastAPI (same tokens, limits, validation,
    answers and errors; see services/serving/hotpath.py). Off: through FastAPI's full stack, for comparison."""
    routing_seed: int | None = None
    """Seed of the random split of requests without a routing key (None: from the OS). Set in tests so a
    canary's share of a run is reproducible; requests with a key are split by its hash either way."""
    traces_per_s: float = Field(default=10.0, ge=0)
    """Predict requests traced a second on the hot path (a server span each), besides every request whose
    caller sends a sampled ``traceparent``: all of them under light traffic, a steady sample under load."""
    admission_bytes: int = Field(default=512 * 1024, ge=1)
    """Large request bodies (over ``admission_min_bytes``) processed at once share this many bytes (by their
    Content-Length); the others wait, unread, in arrival order. Keeps /healthz answering and memory flat under
    a flood of large predicts (services/serving/admission.py). Two or three 1,000-instance predicts: two cores
    answer no faster with more in hand."""
    admission_min_bytes: int = Field(default=64 * 1024, ge=0)
    """Bodies up to this size are never held (single-row predicts are micro-batched instead)."""
    preload_sklearn: bool = True
    """Import scikit-learn in the background once serving started (about 100 MiB), so that the first version
    served on scikit-learn (a drift retrain before its ONNX export) loads in milliseconds, not seconds."""
    onnx_threads: int = Field(default=1, ge=1)
    """onnxruntime threads per inference call. One suits a 2-core replica, where the other core parses
    HTTP and JSON; raise it on bigger machines that serve large batches."""
    request_id_secret: SecretStr | None = None
    """MAC key that tags the request ids serving issues (at least 16 bytes, e.g. ``openssl rand -hex 32``);
    feedback is accepted only for ids it tagged. Every replica needs the same key. Unset: a random key per
    process, so ids die with the process and replicas reject each other's (``driftloop up`` sets one)."""
    request_id_previous_secrets: list[SecretStr] = Field(default_factory=list)
    """Keys rotated out: ids they tagged are still accepted as feedback until the key is dropped."""
    feedback_rate_per_s: float = Field(default=1000.0, gt=0)
    """Labels per second one principal may send as feedback (token bucket; a label costs one token) …"""
    feedback_burst: float = Field(default=20_000.0, gt=0)
    """… with bursts up to this many labels. Over it: 429 with Retry-After."""
