"""The one table from exceptions to HTTP answers: every error status the service sends is decided here.

| raised                                        | status | body                                        |
|-----------------------------------------------|--------|---------------------------------------------|
| `InvalidRequest`, FastAPI's `RequestValidationError` | 400 | `{"detail": "<field>: <what is wrong>"}` |
| `AuthError`                                   | 401    | empty: a client that failed auth learns nothing |
| `UnknownService`                              | 404    | `{"detail": ...}`                           |
| `PrefetchUnavailable`                         | 412    | a FHIR OperationOutcome, as the spec asks   |
| a body over `max_body_bytes` (`api.limits`)   | 413    | `{"detail": ...}`                           |

An unknown service beats a malformed body: a client that called the wrong URL is told so first.
Anything unexpected while answering a hook never reaches this table: `routes.hooks` answers it with
no cards (a 5xx would block the EHR's workflow).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from cds_service.core.errors import AuthError, CdsError, InvalidRequest, PrefetchUnavailable, UnknownService
from cds_service.services.registry import SERVICES

# The errors with an HTTP answer; any other CdsError that escapes a route is a bug (a plain 500).
ANSWERED: tuple[type[CdsError], ...] = (InvalidRequest, AuthError, UnknownService, PrefetchUnavailable)


def problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def operation_outcome(status: int, code: str, message: str) -> JSONResponse:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }
    return JSONResponse(outcome, status_code=status, media_type="application/fhir+json")


def body_too_large(limit: int) -> JSONResponse:
    return problem(413, f"request body larger than {limit} bytes")


def field_message(exc: ValidationError | RequestValidationError) -> str:
    """`<field path>: <message>` of the first error, e.g. `hookInstance: Field required`."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    return f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid')}"


def response_for(exc: CdsError) -> Response:
    """The HTTP answer to one of the `ANSWERED` errors."""
    if isinstance(exc, InvalidRequest):
        return problem(400, str(exc))
    if isinstance(exc, AuthError):
        return Response(status_code=401)  # CDS Hooks 2.0: no body; the reason is logged and counted
    if isinstance(exc, UnknownService):
        return problem(404, str(exc))
    if isinstance(exc, PrefetchUnavailable):
        return operation_outcome(412, "not-found", f"Prefetch data {', '.join(exc.keys)} missing and {exc.reason}")
    raise TypeError(f"no HTTP answer for {type(exc).__name__}") from exc


async def _answered(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CdsError)  # registered for ANSWERED only
    return response_for(exc)


async def _malformed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    service_id = request.path_params.get("service_id")
    if service_id is not None and service_id not in SERVICES:  # unknown service beats a bad body
        return response_for(UnknownService(service_id))
    return problem(400, field_message(exc))


async def _too_deep(request: Request, exc: Exception) -> Response:
    # A 10,000-deep JSON body exhausts the validator's recursion: it is a malformed request, never a 500.
    return problem(400, "body: JSON nested too deeply")


def install(app: FastAPI) -> None:
    """Register the table's handlers on `app`."""
    for kind in ANSWERED:
        app.add_exception_handler(kind, _answered)
    app.add_exception_handler(RequestValidationError, _malformed)
    app.add_exception_handler(RecursionError, _too_deep)
