"""All configuration in one place, read from `CDS_*` environment variables (or a `.env` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDS_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./cds-data"), description="Local state: SQLite database, caches.")
    model_dir: Path | None = Field(None, description="Model artifacts; default: the shipped model in models/.")
    log_level: str = Field("INFO", description="Python logging level.")
    seed: int = Field(13, description="Default seed for data splits and training.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
