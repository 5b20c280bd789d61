"""Database engine, migrations at start-up, and the two writes the service makes.

SQLite in the data directory by default (no set-up); PostgreSQL with `CDS_DATABASE_URL`. The schema is
created and upgraded by the Alembic migrations shipped in the package, never by `create_all`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from cds_service.hooks.wire import FeedbackItem
from cds_service.storage.tables import AuditRecord, FeedbackRecord

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def postgres_url(url: str) -> str:
    """`postgresql://` URLs use psycopg 3 (the driver we ship)."""
    return "postgresql+psycopg://" + url.split("://", 1)[1] if url.startswith(("postgresql://", "postgres://")) else url


def make_engine(url: str) -> Engine:
    url = postgres_url(url)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # A hung or unreachable server must cost seconds, not minutes: libpq gives up connecting after
    # `connect_timeout` and on unacknowledged writes after `tcp_user_timeout`; the pool waits `pool_timeout`.
    # (The audit path waits far less: `storage.spool` bounds each write and spools past CDS_DB_TIMEOUT_MS.)
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_timeout=2,
        connect_args={"connect_timeout": 2, "tcp_user_timeout": 2000, "keepalives_idle": 5, "keepalives_interval": 2},
    )


def migrate(engine: Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def clamp_to_columns(values: dict[str, Any]) -> dict[str, Any]:
    """Client-supplied strings cut to their column's length: an over-long id must cost its tail, never the
    audit record (over-long ids gave 500s or skipped rows)."""
    out = dict(values)
    for column in AuditRecord.__table__.columns:
        limit = getattr(column.type, "length", None)
        value = out.get(column.name)
        if limit and isinstance(value, str) and len(value) > limit:
            out[column.name] = value[:limit]
    return out


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    def write_audit(self, **values: Any) -> None:
        """Insert one audit record; one whose `record_id` is stored already is skipped (spool replays)."""
        values = clamp_to_columns(values)
        with Session(self.engine) as session, session.begin():
            if values.get("record_id"):
                statement = (
                    self._insert(AuditRecord).values(**values).on_conflict_do_nothing(index_elements=["record_id"])
                )
                session.execute(statement)
            else:
                session.add(AuditRecord(**values))

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def _known_cards(self, session: Session, service: str, card_ids: set[str]) -> set[str]:
        known: set[str] = set()
        rows = session.execute(
            select(AuditRecord.card_ids)
            .where(AuditRecord.service == service)
            .order_by(AuditRecord.id.desc())
            .limit(10_000)
        )
        for (ids,) in rows:
            known.update(card_ids.intersection(ids))
            if known == card_ids:
                break
        return known

    def store_feedback(self, service: str, items: list[FeedbackItem]) -> list[FeedbackItem]:
        """Stores each item once (repeat deliveries are no-ops); returns the items that were new."""
        new: list[FeedbackItem] = []
        with Session(self.engine) as session, session.begin():
            known = self._known_cards(session, service, {i.card for i in items})
            for item in items:
                reason = item.overrideReason.model_dump(mode="json", exclude_none=True) if item.overrideReason else None
                statement = (
                    self._insert(FeedbackRecord)
                    .values(
                        service=service,
                        card_id=item.card,
                        outcome=item.outcome,
                        outcome_timestamp=item.outcomeTimestamp,
                        accepted_suggestions=[s.id for s in item.acceptedSuggestions or []],
                        override_reason=reason,
                        known_card=item.card in known,
                    )
                    .on_conflict_do_nothing()
                    .returning(FeedbackRecord.id)  # a row id only when the item was new
                )
                if session.execute(statement).scalar_one_or_none() is not None:
                    new.append(item)
        return new
