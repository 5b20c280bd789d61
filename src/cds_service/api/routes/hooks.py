"""`POST /cds-services/{id}`: one hook call answered, audited, logged and measured.

The EHR must never be blocked by us, so this route never answers 5xx: anything unexpected while
answering degrades to `{"cards": []}` (reason `internal-error`). Every call that reached a service,
answered or refused (400 bad context, 412 unavailable data), leaves an audit record: which cards went
to which patient under which model version, and why an answer was degraded. Logs carry no PHI.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from cds_service.api.deps import AnswererDep, AuditDep, AuthorizedService, ReceivedDep
from cds_service.api.errors import response_for
from cds_service.core.errors import InvalidRequest, PrefetchUnavailable
from cds_service.core.telemetry import CARDS_RETURNED, HOOK_ERRORS, REQUEST_LATENCY
from cds_service.hooks.wire import CdsResponse, HookRequest, dump
from cds_service.services.answer import HookAnswer, HookAnswerer
from cds_service.services.spec import ServiceSpec
from cds_service.storage.spool import AuditWriter

log = logging.getLogger(__name__)
router = APIRouter(tags=["CDS Hooks"])


@router.post(
    "/cds-services/{service_id}",
    response_model=CdsResponse,
    response_model_exclude_none=True,
    responses={
        400: {"description": "Malformed request"},
        401: {"description": "JWT rejected"},
        404: {"description": "Unknown service"},
        412: {"description": "Required data unavailable"},
        413: {"description": "Body too large"},
    },
)
async def call_service(
    service: AuthorizedService,
    request: Request,
    payload: HookRequest,
    answerer: AnswererDep,
    audit: AuditDep,
    received: ReceivedDep,
) -> Response:
    started = time.perf_counter()
    if payload.hook != service.hook:
        HOOK_ERRORS.labels(service=service.id, status="400").inc()
        raise InvalidRequest(f"hook: service {service.id!r} answers {service.hook!r}, not {payload.hook!r}")
    issuer = getattr(request.state, "issuer", None)
    status, response, answer = await _answer(answerer, service, payload, received, issuer)
    elapsed = time.perf_counter() - started
    REQUEST_LATENCY.labels(service=service.id, hook=payload.hook).observe(elapsed)
    await _audit(audit, service, payload, status, answer)
    log.info(
        "%s %s hookInstance=%s status=%d cards=%d outcome=%s %.0f ms",
        service.id,
        payload.hook,
        payload.hookInstance,
        status,
        len(answer.cards),
        answer.outcome,
        elapsed * 1e3,
    )
    return response


async def _answer(
    answerer: HookAnswerer, service: ServiceSpec, payload: HookRequest, received: float | None, issuer: str | None
) -> tuple[int, Response, HookAnswer]:
    """(status, response, answer): 200 with cards; 400/412 refusals; 200 with no cards if we failed."""
    try:
        answer = await answerer.handle(service, payload, received, issuer)
    except (InvalidRequest, PrefetchUnavailable) as exc:
        refusal = response_for(exc)
        HOOK_ERRORS.labels(service=service.id, status=str(refusal.status_code)).inc()
        reason = "bad-context" if isinstance(exc, InvalidRequest) else "unavailable"
        return refusal.status_code, refusal, HookAnswer(reasons=[reason])
    except Exception as exc:  # never block the EHR: an empty answer, counted and logged
        _log_unexpected(service, exc)
        answer = HookAnswer(reasons=["internal-error"])
    for card in answer.cards:
        CARDS_RETURNED.labels(service=service.id, topic=card.source.topic.code if card.source.topic else "").inc()
    return 200, JSONResponse(dump(CdsResponse(cards=answer.cards))), answer


def _log_unexpected(service: ServiceSpec, exc: Exception) -> None:
    # Type and place only: exception messages can quote patient data, and logs carry no PHI.
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    place = f"{Path(where.filename).name}:{where.lineno}" if where else "?"
    log.error("%s: unexpected %s at %s; answering with no cards", service.id, type(exc).__name__, place)


def audit_record(service: ServiceSpec, payload: HookRequest, status: int, answer: HookAnswer) -> dict[str, Any]:
    """The audit row of one call: ids, versions, outcome and timings; no clinical content."""
    return {
        "record_id": str(uuid.uuid4()),
        "service": service.id,
        "hook": payload.hook,
        "hook_instance": payload.hookInstance,
        "patient_id": answer.patient_id,
        "model_version": answer.model_version,
        "status": status,
        "outcome": answer.outcome,
        "card_ids": [c.uuid for c in answer.cards],
        "suggestion_ids": [s.uuid for c in answer.cards for s in c.suggestions or []],
        "details": {
            "timings_ms": {k: round(v, 1) for k, v in answer.timings_ms.items()},
            "reasons": answer.reasons,
            "withheld": answer.withheld,
            "topics": [c.source.topic.code if c.source.topic else None for c in answer.cards],
        },
    }


async def _audit(
    audit: AuditWriter, service: ServiceSpec, payload: HookRequest, status: int, answer: HookAnswer
) -> None:
    """Into the database within its timeout, else into the local spool (`storage.spool`)."""
    try:
        await audit.write(audit_record(service, payload, status, answer))
    except Exception as exc:  # the spool itself failed (disk): the answer still goes out; the failure is loud
        log.error("audit record NOT written for hookInstance=%s: %s", payload.hookInstance, type(exc).__name__)
