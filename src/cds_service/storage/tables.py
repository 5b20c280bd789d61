"""Durable records: one audit row per hook response, one row per feedback item (idempotent)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, UniqueConstraint, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class AuditRecord(Base):
    """What we answered and why it is traceable; no PHI beyond the patient id."""

    __tablename__ = "audit_record"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Ours, one per answer: a record replayed from the local spool is stored once (migration 0002).
    record_id: Mapped[str | None] = mapped_column(String(36), unique=True, index=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    service: Mapped[str] = mapped_column(String(100), index=True)
    hook: Mapped[str] = mapped_column(String(100))
    hook_instance: Mapped[str] = mapped_column(String(100), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(200))
    model_version: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)  # HTTP status we answered
    outcome: Mapped[str] = mapped_column(String(50))  # ok | degraded | unavailable | ...
    card_ids: Mapped[list[str]] = mapped_column(JSON)
    suggestion_ids: Mapped[list[str]] = mapped_column(JSON)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)  # timings, degradation reasons, card topics


class FeedbackRecord(Base):
    __tablename__ = "feedback_record"
    # Idempotency: the same item delivered twice is stored once.
    __table_args__ = (UniqueConstraint("service", "card_id", "outcome", "outcome_timestamp", name="uq_feedback"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    service: Mapped[str] = mapped_column(String(100), index=True)
    card_id: Mapped[str] = mapped_column(String(100), index=True)
    outcome: Mapped[str] = mapped_column(String(20))
    outcome_timestamp: Mapped[str] = mapped_column(String(40))
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSON)
    override_reason: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    known_card: Mapped[bool] = mapped_column(default=False)  # the card id is in our audit trail
