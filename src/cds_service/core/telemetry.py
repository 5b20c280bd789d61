"""Prometheus metrics, defined once at import (one process, one registry); served at `/metrics`."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

REQUEST_LATENCY = Histogram(
    "cds_hook_request_seconds", "Hook request latency", ["service", "hook"], buckets=LATENCY_BUCKETS
)
CARDS_RETURNED = Counter("cds_cards_returned_total", "Cards returned", ["service", "topic"])
DEADLINE_MISSES = Counter("cds_deadline_misses_total", "Model scoring that missed the request deadline", ["service"])
DEGRADED = Counter(
    "cds_degraded_responses_total", "Responses with fewer cards than normal, by reason", ["service", "reason"]
)
WITHHELD = Counter(
    "cds_model_suggestions_withheld_total",
    "Model suggestions not shown, by the trust gate that withheld them",
    ["service", "reason"],
)
FHIR_REFUSED = Counter("cds_fhir_server_refused_total", "fhirServer URLs not called (not https or not allowed)")
AUDIT_SPOOLED = Counter("cds_audit_spooled_total", "Audit records written to the local spool (database unavailable)")
REPLAY_CACHE_FALLBACKS = Counter(
    "cds_replay_cache_fallbacks_total", "JWT replay checks answered in process because Redis was unavailable"
)
FALLBACKS = Counter("cds_backend_fallbacks_total", "Scoring that fell back from the configured backend", ["reason"])
HOOK_ERRORS = Counter("cds_hook_errors_total", "Hook requests answered with an error status", ["service", "status"])
MODEL_SECONDS = Histogram("cds_model_seconds", "Model work per request, by stage", ["stage"], buckets=LATENCY_BUCKETS)
FEEDBACK = Counter("cds_feedback_total", "Feedback items received (new, not repeats)", ["service", "outcome"])
AUTH_FAILURES = Counter("cds_auth_failures_total", "Rejected client JWTs, by reason", ["reason"])
BATCH_SIZE = Histogram("cds_worker_batch_size", "Jobs per worker forward pass", buckets=(1, 2, 4, 8, 16, 32, 64))
QUEUE_WAIT = Histogram("cds_queue_wait_seconds", "Time a job waited in the queue", buckets=LATENCY_BUCKETS)
CACHE_LOOKUPS = Counter("cds_score_cache_total", "Score cache lookups by hooks", ["result"])
PRECOMPUTED = Counter("cds_precomputed_total", "Scores precomputed by patient-view for later order hooks")


def quiet_phi_loggers() -> None:
    """Libraries that log URLs or SQL parameters (patient ids in FHIR queries: 341 log lines in one campaign;
    a clinician's comment inside a database error) log at WARNING and above only; our own messages never
    carry them. Called when the app is built, so every way of serving it gets it."""
    for name in ("httpx", "httpcore", "sqlalchemy.engine", "sqlalchemy.pool", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
