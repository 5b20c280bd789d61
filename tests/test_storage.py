"""Feedback and audit storage on the real PostgreSQL (127.0.0.1:5432, database `test`) and on SQLite."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from cds_service.core.settings import Settings
from cds_service.hooks.wire import FeedbackItem
from cds_service.storage.db import Store, make_engine, migrate
from cds_service.storage.tables import FeedbackRecord

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def feedback(card: str) -> list[FeedbackItem]:
    return [
        FeedbackItem.model_validate(
            {
                "card": card,
                "outcome": "accepted",
                "outcomeTimestamp": "2026-11-23T10:00:00Z",
                "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
            }
        ),
        FeedbackItem.model_validate(
            {
                "card": card,
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-23T10:05:00Z",
                "overrideReason": {"reason": {"code": "will-monitor"}, "userComment": "ok"},
            }
        ),
    ]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_feedback_is_stored_once_per_item(backend: str, tmp_path: Path) -> None:
    url = POSTGRES_URL if backend == "postgresql" else Settings(data_dir=tmp_path / "fresh").resolved_database_url
    engine = make_engine(url)
    migrate(engine)
    migrate(engine)  # idempotent: a restart re-runs migrations
    store = Store(engine)
    card = str(uuid.uuid4())
    store.write_audit(
        service="diagnosis-suggestions",
        hook="patient-view",
        hook_instance=str(uuid.uuid4()),
        patient_id="p1",
        model_version="m@1",
        status=200,
        outcome="ok",
        card_ids=[card],
        suggestion_ids=[],
        details={},
    )
    assert len(store.store_feedback("diagnosis-suggestions", feedback(card))) == 2
    assert store.store_feedback("diagnosis-suggestions", feedback(card)) == []  # redelivery
    with Session(engine) as session:
        rows = session.scalars(select(FeedbackRecord).where(FeedbackRecord.card_id == card)).all()
        assert len(rows) == 2 and all(r.known_card for r in rows)
        assert {r.outcome for r in rows} == {"accepted", "overridden"}
        assert session.scalar(select(func.count()).select_from(FeedbackRecord)) >= 2
    assert {"audit_record", "feedback_record", "alembic_version"} <= set(inspect(engine).get_table_names())
    engine.dispose()
