"""`POST /cds-services/{id}/feedback`: what clinicians did with our cards, stored once per card outcome.

The spec allows a `{"feedback": [...]}` batch or (in practice, from older clients) a single item; both
are read here by hand, not by FastAPI, so that each shape's 400 names the field in its own terms.
Repeated deliveries are normal (clients retry), so storing is idempotent and the answer says how many
items were new.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from cds_service.api.deps import AuthorizedService, SettingsDep, StoreDep
from cds_service.api.errors import field_message
from cds_service.core.errors import InvalidRequest
from cds_service.core.telemetry import FEEDBACK
from cds_service.hooks.wire import FeedbackItem, FeedbackRequest

log = logging.getLogger(__name__)

router = APIRouter(tags=["CDS Hooks"])

_SCHEMA = {
    "oneOf": [
        FeedbackRequest.model_json_schema(ref_template="#/components/schemas/{model}"),
        FeedbackItem.model_json_schema(ref_template="#/components/schemas/{model}"),
    ]
}


def feedback_items(body: bytes) -> list[FeedbackItem]:
    """The items of a batch or of a single item; `InvalidRequest` naming the field."""
    try:
        raw = json.loads(body)
    except ValueError:
        raise InvalidRequest("body: not valid JSON") from None
    batch = isinstance(raw, dict) and "feedback" in raw
    try:
        return FeedbackRequest.model_validate(raw).feedback if batch else [FeedbackItem.model_validate(raw)]
    except ValidationError as exc:
        raise InvalidRequest(("" if batch else "feedback item ") + field_message(exc)) from exc


@router.post(
    "/cds-services/{service_id}/feedback",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _SCHEMA}}}},
    responses={
        400: {"description": "Malformed feedback"},
        401: {"description": "JWT rejected"},
        404: {"description": "Unknown service"},
        503: {"description": "Storage unavailable: nothing was acknowledged, send it again"},
    },
)
async def feedback(
    service: AuthorizedService, request: Request, store: StoreDep, settings: SettingsDep
) -> JSONResponse:
    items = feedback_items(await request.body())
    # Feedback is acknowledged only once stored: a failing or hung database answers 503 within a bounded
    # wait, and the client's retry is harmless (storage is idempotent per card outcome).
    try:
        new = await asyncio.wait_for(
            run_in_threadpool(store.store_feedback, service.id, items), max(1.0, 4 * settings.db_timeout_ms / 1000)
        )
    except Exception as exc:
        log.error("%s: feedback not stored (%s); answered 503", service.id, type(exc).__name__)
        return JSONResponse(
            {"detail": "feedback storage unavailable; retry"}, status_code=503, headers={"Retry-After": "5"}
        )
    for item in new:
        FEEDBACK.labels(service=service.id, outcome=item.outcome).inc()
    return JSONResponse({"received": len(items), "stored": len(new)})
