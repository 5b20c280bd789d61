"""What routes receive, as typed `Annotated` dependencies (the pattern of full-stack-fastapi-template).

Everything heavy is built once, in the app's lifespan (`api.main`), and reached here through
`app.state`; a route names only what it uses. `AuthorizedService` is the door every per-service route
goes through: the service must exist (404) and, unless in development mode, the caller's JWT must be
for it (401); both are decided before the body is validated, so a stranger learns nothing from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from cds_service.api.auth import JwtVerifier
from cds_service.api.timing import received_at
from cds_service.core.errors import AuthError
from cds_service.core.settings import Settings
from cds_service.core.telemetry import HOOK_ERRORS
from cds_service.ml.contract import InferenceBackend
from cds_service.services.answer import HookAnswerer
from cds_service.services.registry import service_named
from cds_service.services.spec import ServiceSpec
from cds_service.storage.db import Store
from cds_service.storage.spool import AuditWriter


@dataclass(frozen=True)
class Resources:
    """What the lifespan built for every request to share."""

    settings: Settings
    backend: InferenceBackend | None
    store: Store
    answerer: HookAnswerer
    verifier: JwtVerifier
    audit: AuditWriter


def _resources(request: Request) -> Resources:
    resources: Resources = request.app.state.cds
    return resources


ResourcesDep = Annotated[Resources, Depends(_resources)]


def _settings(resources: ResourcesDep) -> Settings:
    return resources.settings


def _backend(resources: ResourcesDep) -> InferenceBackend | None:
    return resources.backend


def _store(resources: ResourcesDep) -> Store:
    return resources.store


def _audit(resources: ResourcesDep) -> AuditWriter:
    return resources.audit


def _answerer(resources: ResourcesDep) -> HookAnswerer:
    return resources.answerer


def _verifier(resources: ResourcesDep) -> JwtVerifier:
    return resources.verifier


SettingsDep = Annotated[Settings, Depends(_settings)]
BackendDep = Annotated[InferenceBackend | None, Depends(_backend)]
StoreDep = Annotated[Store, Depends(_store)]
AuditDep = Annotated[AuditWriter, Depends(_audit)]
AnswererDep = Annotated[HookAnswerer, Depends(_answerer)]
VerifierDep = Annotated[JwtVerifier, Depends(_verifier)]
ReceivedDep = Annotated[float | None, Depends(received_at)]


async def _authorized_service(
    service_id: str, request: Request, settings: SettingsDep, verifier: VerifierDep
) -> ServiceSpec:
    service = service_named(service_id)  # UnknownService: 404
    if not settings.auth_enabled:
        return service
    # The token's `aud` is exactly the endpoint called: the service's URL, or (feedback) the feedback URL
    # under it; a token minted for one is refused at the other.
    base = settings.public_url.rstrip("/")
    suffix = "/feedback" if request.url.path.rstrip("/").endswith("/feedback") else ""
    audiences = [f"{base}/cds-services/{service_id}{suffix}"]
    try:
        claims = await verifier.verify(request.headers.get("authorization"), audiences)
        request.state.issuer = claims["iss"]  # decides which FHIR servers this caller's hooks may name
    except AuthError:
        HOOK_ERRORS.labels(service=service.id, status="401").inc()
        raise
    return service


AuthorizedService = Annotated[ServiceSpec, Depends(_authorized_service)]
