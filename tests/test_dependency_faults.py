"""Failing and hanging dependencies cost a bounded few hundred milliseconds, never an answer, a safety card
or an audit record (hardening issue). Real processes: a private PostgreSQL cluster and a private Redis,
started by the test and paused with SIGSTOP (a hung server: it accepts nothing, answers nothing).

Found by the fault campaign and fixed: a hung database blocked every hook answer (3 of 3 over 8 s) and the
audit rows of hooks answered while it was down were lost for good (10 of 10); with JWT on, a Redis outage
turned 151 of 151 hook calls into 500s (the replay cache) and a hung Redis cost 5 s per call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from cds_service.api.main import create_app
from cds_service.core.settings import Settings
from tests import processes
from tests.records import warfarin_aspirin_order_sign
from tests.test_auth import ISS, JWKS, claims, sign

pytestmark = pytest.mark.slow
SERVICE = "treatment-recommendations-order-sign"
PUBLIC = "https://cds.example.org"
BUDGET_S = 2.0  # the deadline (450 ms) plus the dependency timeouts, with room for a loaded CI machine


@pytest.fixture()
def postgres() -> Iterator[tuple[str, int]]:
    with processes.postgres() as server:
        yield server


@pytest.fixture()
def redis() -> Iterator[tuple[str, int]]:
    with processes.redis() as server:
        yield server


def audit_rows(url: str) -> list[tuple[str, str]]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as db:
        rows = db.execute(text("SELECT hook_instance, record_id FROM audit_record")).all()
    engine.dispose()
    return [(str(h), str(r)) for h, r in rows]


def feedback_rows(url: str, card: str) -> int:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as db:
        count = db.execute(text("SELECT count(*) FROM feedback_record WHERE card_id = :c"), {"c": card}).scalar()
    engine.dispose()
    return int(count or 0)


def timed_post(client: TestClient, body: dict[str, Any], **kw: Any) -> tuple[Any, float]:
    started = time.monotonic()
    response = client.post(f"/cds-services/{SERVICE}", json=body, **kw)
    return response, time.monotonic() - started


def test_a_hung_database_costs_each_answer_its_timeout_and_loses_no_audit_record(
    postgres: tuple[str, int], tmp_path: Path
) -> None:
    url, server = postgres
    settings = Settings(dev_mode=True, data_dir=tmp_path / "data", database_url=url, db_timeout_ms=250)
    sent: list[str] = []
    with TestClient(create_app(settings, backend=None)) as client:
        for _ in range(3):
            body = warfarin_aspirin_order_sign()
            response, _ = timed_post(client, body)
            assert response.status_code == 200
            sent.append(body["hookInstance"])
        with processes.paused(server):
            for _ in range(10):
                body = warfarin_aspirin_order_sign()
                response, elapsed = timed_post(client, body)
                assert response.status_code == 200 and elapsed < BUDGET_S, elapsed
                assert response.json()["cards"][0]["summary"].startswith("Major interaction")  # safety intact
                sent.append(body["hookInstance"])
            ready = client.get("/readyz").json()
            assert ready["database"] == "down" and ready["audit_spooled"] >= 10
            item = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-12-02T10:00:00Z"}
            started = time.monotonic()
            refused = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [item]})
            assert refused.status_code == 503 and time.monotonic() - started < BUDGET_S  # never acknowledged
        retried = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [item]})  # the EHR retries
        again = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [item]})
        assert retried.status_code == again.status_code == 200  # acknowledged once the database answers
        audit = client.app.state.cds.audit  # type: ignore[attr-defined]
        for _ in range(100):  # the background replayer, or the next write, brings the spool in
            if not audit.spooled():
                break
            audit.replay()
            time.sleep(0.1)
    rows = audit_rows(url)
    assert sorted(h for h, _ in rows) == sorted(sent)  # none lost, none twice
    # the feedback is stored exactly once: by the write that timed out here but committed there after the
    # pause, or by the retry, never both (storage is idempotent per card outcome)
    assert feedback_rows(url, item["card"]) == 1
    assert len({r for _, r in rows}) == len(rows)


def test_a_hung_redis_costs_jwt_calls_milliseconds_and_replays_are_still_caught(
    redis: tuple[str, int], tmp_path: Path
) -> None:
    url, server = redis
    settings = Settings(data_dir=tmp_path, public_url=PUBLIC, jwt_jwks={ISS: JWKS}, redis_url=url)
    audience = f"{PUBLIC}/cds-services/{SERVICE}"

    def token() -> dict[str, str]:
        return {"Authorization": sign(claims(aud=audience, jti=str(uuid.uuid4())))}

    with TestClient(create_app(settings, backend=None)) as client:
        response, _ = timed_post(client, warfarin_aspirin_order_sign(), headers=token())
        assert response.status_code == 200
        with processes.paused(server):
            reused = token()
            for headers in [reused] + [token() for _ in range(9)]:
                response, elapsed = timed_post(client, warfarin_aspirin_order_sign(), headers=headers)
                assert response.status_code == 200 and elapsed < BUDGET_S, (response.status_code, elapsed)
                assert response.json()["cards"][0]["summary"].startswith("Major interaction")
            replayed, _ = timed_post(client, warfarin_aspirin_order_sign(), headers=reused)
            assert replayed.status_code == 401  # the same process remembers the jti while Redis is away
            assert client.get("/readyz").json()["redis"] == "down"
        response, _ = timed_post(client, warfarin_aspirin_order_sign(), headers=token())
        assert response.status_code == 200
