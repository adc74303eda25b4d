"""Settings of the trainer service (``DRIFTLOOP_TRAINER_*``)."""

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from libs.common.service import ServiceSettings
from services.trainer.domain.schedule import InvalidCron, normalise


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_TRAINER_", extra="ignore")

    port: int = 8002
    models: dict[str, str] = Field(default_factory=dict)
    """Model → dataset it learns from; a dataset with no entry trains a model of its own name."""
    min_rows_first_model: int = Field(default=1000, ge=10)
    """Rows needed before the first model is trained."""
    min_new_rows: int = Field(default=20_000, ge=1)
    """New rows that justify a routine retrain."""
    drift_min_rows: int = Field(default=1000, ge=10)
    """Rows needed after a drift began before retraining on them."""
    drift_cooldown_s: float = Field(default=120.0, ge=0)
    """Drift reports are ignored this long after a drift-triggered job."""
    refresh_growth: float = Field(default=1.5, gt=1)
    """After a drift, while the rows since it are fewer than ``min_new_rows``, a fuller model is trained each time
    they reach this many times the post-drift rows the last model saw (and ``drift_min_rows`` more at least).
    Smaller: more refreshes, each on a model closer to all the rows since the drift (2 was the old doubling)."""
    seed: int = 42
    """Seed of splits, searches and estimators: same data + seed → same model."""
    search_iterations: int = Field(default=9, ge=1)
    """Hyperparameter candidates at most per job (the first is the champion's); the time budget may try fewer."""
    time_budget_s: float = Field(default=6.0, ge=0)
    """Wall seconds the hyperparameter search may take. The first candidate is always fitted; successive
    halving tries as many others as the budget affords, estimated from that first fit. 0 = no search."""
    drift_time_budget_s: float = Field(default=1.5, ge=0)
    """The search budget of a drift-triggered job, the first model on post-drift rows, and of the post-drift
    refreshes that follow while those rows are fewer than ``min_new_rows``: kept short so that a better model
    serves within seconds of an alarm, and each refresh lands sooner and the next one starts on more rows
    (rows matter more than search then). Later jobs search with ``time_budget_s``. The first candidate is
    always fitted. A drift job's fit is cut short at this budget (it races a champion known to be bad); a
    refresh's only at ``time_budget_s``, as a routine job's is: cut at this budget on a busy machine, a
    refresh on 20,000 rows stopped boosting early and lost to the post-drift champion it should beat."""
    recent_shares: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=lambda: [0.5, 0.25])
    """Jobs that train on the rows since a drift also fit on only the newest of these shares of their training
    rows, and keep the model that scores best on the holdout (the newest rows): a concept still moving after a
    drift (gradual drift) is learnt from where it is now, an abrupt one from all the rows since. Each share
    costs one more fit on that many rows. Empty: all rows since the drift, always."""
    recent_min_rows: int = Field(default=1000, ge=10)
    """Training rows a newest-rows window needs to be tried (smaller ones win the holdout by chance)."""
    recency_half_life: float = Field(default=0.0, ge=0)
    """Jobs that train on the rows since a drift weigh each row by its recency: its weight halves every this
    share of the rows back from the newest (0.25: a quarter of them). 0 (the default): all rows weigh alike.
    scikit-learn's gradient boosting fits 3-4 times slower with sample weights, so under load a weighted
    refresh is cut at its budget; ``recent_shares`` answers a moving concept at a fraction of the cost."""
    reuse_earlier: int = Field(default=3, ge=0)
    """Earlier champions a drift job scores on its holdout (the newest rows), the most recently promoted
    first: when one beats the model the job trained, its pipeline is registered again as the job's model (a
    concept that recurs is served at once by the model that learnt it on more rows). 0: never."""
    search_jobs: int = Field(default=2, ge=1)
    """Fits run in parallel during the search, one thread each (size it to the cores)."""
    max_trees: int = Field(default=1500, ge=10)
    """Trees per model at most: boosting iterations × one tree per class (multi-class) stay under it,
    so training cost stays bounded however many classes there are."""
    cv_folds: int = Field(default=3, ge=2)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    """Share of the most recent rows held out to compare challenger and champion."""
    max_training_rows: int = Field(default=50_000, ge=100)
    """Most recent rows a job trains on at most."""
    min_group_rows: int = Field(default=20, ge=1)
    """Holdout rows a sensitive group needs for its gap to count in the fairness differences."""
    importance_rows: int = Field(default=1000, ge=50)
    """Holdout rows (a seeded subsample) permutation importance and explanation backgrounds use."""
    importance_repeats: int = Field(default=3, ge=1)
    """Shuffles per feature in permutation importance."""
    quick_importance_rows: int = Field(default=250, ge=50)
    """Holdout rows, at most, of the permutation importance of a job answering a drift (one shuffle per
    feature): its model is replaced within seconds, and a full importance took longer than its search."""
    worker_max_jobs: int = Field(default=50, ge=1)
    """Training jobs a worker process runs before it is replaced (what jobs leave in memory stays bounded); its
    exports and re-judgements do not count. A replaced worker takes the pipelines it held with it: at 20 jobs,
    exports included, a worker was replaced after every second or third benchmark stream, once right after
    the drift job whose model the next refresh needed (loaded again from the store: 5.6 s)."""
    holder_wait_s: float = Field(default=3.0, ge=0)
    """A job (or export) whose champion's pipeline is in memory only in a worker busy with something short (an
    ONNX export, a re-judgement) waits this long at most for that worker, rather than load the pipeline from
    the store in another (skops checks every type it rebuilds: 3-6 s on a loaded machine). 0: never waits."""
    export_defer_s: float = Field(default=60.0, ge=0)
    """A version's ONNX export waits up to this long for the model's training queue to be idle (it serves on
    its pipeline meanwhile), so that the refreshes after a drift have the cores to themselves. 0: at once."""
    workers: int = Field(default=1, ge=0)
    """Worker processes running jobs; 0 makes this replica queue jobs only (others run them)."""
    job_lease_s: float = Field(default=60.0, gt=0)
    """A running job whose heartbeat is older than this is considered orphaned and re-queued."""
    max_job_attempts: int = Field(default=2, ge=1)
    """Attempts before a failing job is marked failed."""
    code_version: str | None = None
    """Recorded with every model; the git commit or package version when unset."""
    schedules: dict[str, str] = Field(default_factory=dict)
    """Model → cron expression (5 fields or @daily/@hourly …, UTC) of a scheduled retrain, e.g.
    ``{"churn": "0 3 * * *"}``. A schedule set through ``PUT /v1/schedules/{model}`` wins over this."""
    schedule_check_s: float = Field(default=10.0, gt=0)
    """How often due schedules are looked for: a schedule fires at most this late."""

    registry_url: str = "http://127.0.0.1:8003"
    """Where the registry answers: batch jobs resolve a model's alias or version there."""
    registry_token: SecretStr | None = None
    """A ``reader`` token for the registry; when unset, the trainer issues itself a short-lived one."""
    batch_workers: int = Field(default=1, ge=0)
    """Worker processes running batch prediction jobs, apart from the training workers (0: this replica
    queues batch jobs only)."""
    batch_nice: int = Field(default=10, ge=0, le=19)
    """How much nicer (lower CPU priority) than the trainer batch workers run, so that on a shared host
    a batch job yields the CPU to online work."""
    batch_chunk_rows: int = Field(default=50_000, ge=100)
    """Rows predicted per chunk: a worker holds one chunk (and the input file it comes from) at a time,
    and a restarted job resumes after its last finished chunk."""

    @field_validator("schedules")
    @classmethod
    def _valid_crons(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            return {model: normalise(cron) for model, cron in value.items()}
        except InvalidCron as exc:
            raise ValueError(f"schedules: {exc}") from exc
