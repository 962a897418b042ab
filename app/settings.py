"""Settings, read once from the environment (prefix ``ARBITER_``) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from limits import parse_many
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EXAMPLE_TASKS_DIR = Path(__file__).resolve().parent / "examples"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


RoleName = Literal["predictor", "reviewer", "auditor", "admin"]


class RequestLimits(BaseModel):
    """What one request of one API key may use (docs/limits.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query_cost_budget: int = Field(
        default=150_000, ge=1,
        description="Most an operation may cost (checked before it runs).")
    rate_limit: str = Field(
        default="300/second;10000/minute",
        description="Requests per key, moving windows in `limits` notation, ';' between them.")
    deadline_seconds: float = Field(
        default=30.0, gt=0, description="A query running longer is stopped (not mutations).")
    max_response_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1, description="Largest answer to a query (not mutations).")

    @field_validator("rate_limit")
    @classmethod
    def _readable_rate(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError:
            raise ValueError(
                f"rate limit {value!r} is not like '300/second;10000/minute'") from None
        return value


class Settings(BaseSettings):
    """Everything configurable about one Arbiter process."""

    model_config = SettingsConfigDict(env_prefix="ARBITER_", extra="ignore")

    data_dir: Path = Field(default=Path(".arbiter"), description="Artifacts and SQLite file.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; unset = SQLite in the data dir."
    )
    redis_url: str | None = Field(default=None, description="Unset = embedded broker/pub-sub.")
    redis_namespace: str = Field(
        default="arbiter", description="Prefix of Arbiter's Redis keys (queues, channels)."
    )
    lease_sweep_seconds: float = Field(
        default=30.0, gt=0, description="How often the periodic jobs are sent (lapsed review "
        "leases swept back, retraining triggers, canary guard, drift, shadow backfill).")
    training_stale_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A running training job without a heartbeat for this long lost its "
        "worker and is taken over.",
    )
    tasks_dir: Path = Field(default=EXAMPLE_TASKS_DIR, description="Folder of task TOML files.")
    release_refresh_seconds: float = Field(
        default=2.0, ge=0, description="How often a process re-reads which release is LIVE."
    )
    key_cache_seconds: float = Field(
        default=10.0, ge=0, description="How long a verified API key is remembered."
    )
    max_batch_size: int = Field(default=10_000, ge=1, description="Largest predictBatch.")
    page_size_max: int = Field(default=500, ge=1, description="Largest page of a connection.")
    batch_window_ms: float = Field(
        default=0.3, ge=0, le=50,
        description="How long a lone prediction waits for others to share its model call "
        "and its commit (micro-batching; under load batches form without waiting).")
    batch_max_rows: int = Field(
        default=256, ge=1, description="Most rows in one micro-batched model call or commit.")
    inference_threads: int = Field(
        default=1, ge=1, le=64,
        description="Threads running models per process (each uses one BLAS/OpenMP thread).")
    shadow_max_in_flight: int = Field(
        default=8, ge=0,
        description="Shadow scoring batches a server runs at once after its predictions' "
        "transactions; beyond that (or at 0) the periodic backfill job scores them instead.")
    shadow_settle_seconds: float = Field(
        default=60.0, ge=0,
        description="The backfill job leaves predictions younger than this to the server "
        "that made them.")
    subscription_buffer: int = Field(
        default=256, ge=1, description="Events a subscriber may fall behind before it is cut off."
    )
    ws_max_subscriptions: int = Field(
        default=20, ge=1, description="Subscriptions one websocket connection may hold."
    )
    ws_keepalive_seconds: float = Field(
        default=15.0, gt=0, description="Interval of the server's pings on a websocket."
    )

    audit_signing_key: Path | None = Field(
        default=None, description="Ed25519 private key (PEM file) signing the audit log's "
        "checkpoints; keep it outside the data folder. Unset = a demo key made in the data "
        "folder (production warns).")
    audit_checkpoint_seconds: float = Field(
        default=5.0, gt=0, description="A checkpoint is signed when the log grew and this "
        "long passed since the last ...")
    audit_checkpoint_events: int = Field(
        default=10_000, ge=1, description="... or when this many events were added.")
    audit_sequence_seconds: float = Field(
        default=0.2, gt=0, description="How often a server gives committed audit events "
        "their leaves in the log's Merkle tree.")
    audit_text_max_chars: int = Field(
        default=2_000, ge=1, description="Longest free text (review comment, reason) the "
        "audit log keeps; longer is refused with BAD_REQUEST.")

    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto = JSON lines off a terminal, text on one."
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING, ERROR.")
    metrics_token: str | None = Field(
        default=None, description="Unset = /metrics is open; set = it needs this bearer token."
    )
    ready_timeout_seconds: float = Field(
        default=2.0, gt=0, description="How long each /readyz check may take."
    )

    request_limits: RequestLimits = Field(
        default_factory=RequestLimits,
        description="Every key's limits (JSON, e.g. {\"rate_limit\": \"50/second\"}).")
    role_limits: dict[RoleName, dict[str, Any]] = Field(
        default_factory=dict, description="Per role, the limits that differ from "
        "request_limits (JSON, e.g. {\"predictor\": {\"query_cost_budget\": 100000}}).")

    @model_validator(mode="after")
    def _role_limits_valid(self) -> Settings:
        for role in self.role_limits:
            self.limits_for(role)
        return self

    def limits_for(self, role: str) -> RequestLimits:
        """The request limits of ``role``: the defaults with its overrides."""
        overrides = self.role_limits.get(role)  # type: ignore[call-overload]
        if not overrides:
            return self.request_limits
        return RequestLimits.model_validate({**self.request_limits.model_dump(), **overrides})

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level {value!r} is not one of {', '.join(LOG_LEVELS)}")
        return level

    environment: Literal["development", "production"] = Field(
        default="development",
        description="production: no GraphiQL, no introspection, no 'Did you mean' hints.")
    introspection: bool | None = Field(
        default=None, description="Schema introspection; unset = on except in production.")
    max_query_depth: int = Field(default=15, ge=1, description="Deepest field nesting.")
    max_query_tokens: int = Field(
        default=10_000, ge=1, description="Most tokens in one GraphQL document.")
    max_aliases: int = Field(default=30, ge=0, description="Most aliases in one document.")
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, description="Largest HTTP request body.")

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def introspection_enabled(self) -> bool:
        return self.introspection if self.introspection is not None else not self.production

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'arbiter.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"
