"""`POST /cds-services/{id}/feedback`: what clinicians did with our cards, stored once per card outcome.

The spec allows a `{"feedback": [...]}` batch or (in practice, from older clients) a single item; both
are read here by hand, not by FastAPI, so that each shape's 400 names the field in its own terms.
Repeated deliveries are normal (clients retry), so storing is idempotent and the answer says how many
items were new.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from cds_service.api.deps import AuthorizedService, StoreDep
from cds_service.api.errors import field_message
from cds_service.core.errors import InvalidRequest
from cds_service.core.telemetry import FEEDBACK
from cds_service.hooks.wire import FeedbackItem, FeedbackRequest

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
    },
)
async def feedback(service: AuthorizedService, request: Request, store: StoreDep) -> JSONResponse:
    items = feedback_items(await request.body())
    new = await run_in_threadpool(store.store_feedback, service.id, items)
    for item in new:
        FEEDBACK.labels(service=service.id, outcome=item.outcome).inc()
    return JSONResponse({"received": len(items), "stored": len(new)})
