"""All configuration in one place, read from `CDS_*` environment variables (or a `.env` file).

Production is the default: JWT verification is on unless `CDS_DEV_MODE=true` (or `serve --dev`), and a
production configuration that could not verify any client is refused at start-up.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_MODELS = Path(__file__).resolve().parents[3] / "models"
DEFAULT_MODEL = "synthea-cpu"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDS_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./cds-data"), description="Local state: SQLite database, caches.")
    model_dir: Path | None = Field(None, description="Model artifacts; default: the shipped model in models/.")
    log_level: str = Field("INFO", description="Python logging level.")
    seed: int = Field(13, description="Default seed for data splits and training.")

    # service
    public_url: str = Field("http://localhost:8000", description="Base URL EHRs call (JWT `aud`, card links).")
    dev_mode: bool = Field(False, description="Embedded development mode: JWT verification off (loudly).")
    deadline_ms: int = Field(450, description="Per-request time budget; cards not ready by then are dropped.")
    fhir_timeout_ms: int = Field(300, description="Budget for fetching missing data from the EHR's FHIR server.")
    fhir_max_bytes: int = Field(20_000_000, ge=1, description="Largest FHIR response body read (streamed, then cut).")
    fhir_max_requests: int = Field(32, ge=1, description="Most FHIR requests one hook call may send.")
    fhir_allowed_origins: list[str] = Field(
        [],
        description="FHIR server origins (scheme://host[:port]) the service may call with the EHR's token; empty: "
        "any https origin (and, in development mode, http on loopback). Set it in production.",
    )
    fhir_origins_by_issuer: dict[str, list[str]] = Field(
        {},
        description="Per JWT issuer, the FHIR server origins its hooks may name (checked before the token is "
        "sent); an issuer listed here is held to its own list.",
    )
    max_body_bytes: int = Field(20_000_000, description="Larger request bodies are refused with 413.")
    max_cards: int = Field(3, description="Most model cards per response (safety cards are never capped).")
    min_card_probability: float = Field(0.2, description="Model suggestions below this are never shown.")
    min_evidence_drop: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="A model card is shown only if leaving out its top evidence record lowers its probability by "
        "at least this much (else the evidence does not explain it, and it is withheld and counted).",
    )
    torch_threads: int | None = Field(None, description="Threads for in-process inference (default: torch's).")
    cors_origins: list[str] = Field(["*"], description="Browser origins allowed to call the service.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir.")
    db_timeout_ms: int = Field(
        250, ge=1, description="Longest wait for an audit write; past it the record goes to the local spool."
    )

    # trust
    jwt_issuers: dict[str, str] = Field(
        default_factory=dict, description='Allow-listed issuers: {"iss": "JWKS URL"} (JSON).'
    )
    jwt_jwks: dict[str, dict[str, object]] = Field(
        default_factory=dict, description='Configured JWKS per issuer: {"iss": {"keys": [...]}} (JSON).'
    )
    jwt_algorithms: list[str] = Field(["RS384", "ES384"], description="Accepted JWS algorithms (asymmetric only).")
    jwt_leeway_s: int = Field(60, description="Clock-skew leeway for exp/nbf/iat.")
    jwt_max_lifetime_s: int = Field(
        3600, ge=1, description="Longest token lifetime (exp - iat) accepted: a stolen long-lived token is refused."
    )
    redis_url: str | None = Field(None, description="Redis: JWT replay cache, Celery broker and results, cache.")

    # scale-out
    inference_backend: str | None = Field(
        None, description="inprocess | celery (default: celery when CDS_REDIS_URL is set, else inprocess)."
    )
    inference_queue: str = Field("cds-inference", description="Celery queue the GPU workers consume.")
    fallback_inprocess: bool = Field(True, description="With celery: also load the model in the API, to fall back.")
    batch_max: int = Field(16, description="Worker micro-batch: most jobs per forward pass.")
    batch_wait_ms: float = Field(10.0, description="Worker micro-batch: longest wait for more jobs.")
    max_waiting_requests: int = Field(128, description="With celery: requests that may wait on workers at once.")
    cache_ttl_s: int = Field(600, description="Precomputed scores live this long in Redis.")

    @property
    def auth_enabled(self) -> bool:
        return not self.dev_mode

    @property
    def resolved_backend(self) -> str:
        return self.inference_backend or ("celery" if self.redis_url else "inprocess")

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or REPO_MODELS / DEFAULT_MODEL

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'cds.sqlite3').resolve()}"

    @property
    def model_card_url(self) -> str:
        return f"{self.public_url.rstrip('/')}/model-card"

    @model_validator(mode="after")
    def _safe(self) -> Settings:
        bad = [a for a in self.jwt_algorithms if not a.startswith(("RS", "ES", "PS"))]
        if bad:
            raise ValueError(f"jwt_algorithms: only asymmetric algorithms are allowed, not {bad}")
        if self.inference_backend not in (None, "inprocess", "celery"):
            raise ValueError("inference_backend: must be inprocess or celery")
        if self.inference_backend == "celery" and not self.redis_url:
            raise ValueError("inference_backend=celery needs CDS_REDIS_URL")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
