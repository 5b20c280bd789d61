"""Wire types of CDS Hooks 2.0, named after the spec's objects.

Requests are validated strictly (an envelope error is a 400 that names the field), the context against
its hook's model by `validate_context`; the FHIR data inside (`prefetch`, `draftOrders`) is kept as plain
JSON and read leniently elsewhere. Responses are built from these models and serialised without `None`
members, because the spec forbids null or empty members.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from cds_service.core.errors import InvalidRequest

log = logging.getLogger(__name__)

NonEmpty = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]
# Ids and names from the client, bounded at the edge (a 400 naming the field), within the audit columns they
# are stored in: an over-long id must never reach the database as a 500 or a skipped audit row.
Id = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]


class _Wire(BaseModel):
    # Unknown members are allowed (the spec's `extension`, and fields added by later versions).
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class FhirAuthorization(_Wire):
    access_token: NonEmpty
    token_type: Literal["Bearer"]
    expires_in: int = Field(ge=0)
    scope: NonEmpty
    subject: NonEmpty
    patient: str | None = None

    def __repr__(self) -> str:  # never print the token
        return f"FhirAuthorization(subject={self.subject!r}, scope={self.scope!r})"

    __str__ = __repr__


class HookRequest(_Wire):
    hook: Name
    hookInstance: NonEmpty
    fhirServer: Annotated[str, StringConstraints(max_length=2048)] | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None

    @field_validator("hookInstance")
    @classmethod
    def _uuid(cls, value: str) -> str:
        uuid.UUID(value)  # ValueError names the field via pydantic
        return value

    @field_validator("fhirServer")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/") if value else value


class PatientContext(_Wire):
    userId: Id
    patientId: Id
    encounterId: Annotated[str, StringConstraints(max_length=200)] | None = None


class EncounterStartContext(PatientContext):
    encounterId: Id


class OrderSignContext(PatientContext):
    draftOrders: dict[str, Any]

    @field_validator("draftOrders")
    @classmethod
    def _bundle(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("resourceType") != "Bundle":
            raise ValueError("must be a FHIR Bundle")
        if not isinstance(value.get("entry", []), list):
            raise ValueError("entry must be a list")
        return value


class OrderSelectContext(OrderSignContext):
    selections: list[NonEmpty] = Field(min_length=1)


CONTEXTS: dict[str, type[PatientContext]] = {
    "patient-view": PatientContext,
    "encounter-start": EncounterStartContext,
    "order-select": OrderSelectContext,
    "order-sign": OrderSignContext,
}


# ---- responses ----


class Coding(_Wire):
    code: NonEmpty
    system: str | None = None
    display: str | None = None


class Source(_Wire):
    label: NonEmpty
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(_Wire):
    type: Literal["create", "update", "delete"]
    description: NonEmpty
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _target(self) -> Action:
        if self.type == "delete" and not self.resourceId:
            raise ValueError("a delete action needs resourceId")
        if self.type in ("create", "update") and not self.resource:
            raise ValueError(f"a {self.type} action needs resource")
        return self


class Suggestion(_Wire):
    label: NonEmpty
    uuid: str = Field(default_factory=lambda: str(uuid.uuid4()))
    isRecommended: bool | None = None
    actions: list[Action] = Field(min_length=1)


class Link(_Wire):
    label: NonEmpty
    url: NonEmpty
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class Card(_Wire):
    uuid: str = Field(default_factory=lambda: str(uuid.uuid4()))
    summary: Annotated[str, StringConstraints(min_length=1, max_length=139)]
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None

    @model_validator(mode="after")
    def _selection(self) -> Card:
        if self.suggestions and not self.selectionBehavior:
            raise ValueError("selectionBehavior is required when there are suggestions")
        if self.overrideReasons and any(not r.display for r in self.overrideReasons):
            raise ValueError("every override reason needs a display")
        return self


class CdsResponse(_Wire):
    cards: list[Card] = Field(default_factory=list)


class ServiceDescription(_Wire):
    hook: NonEmpty
    id: NonEmpty
    title: str | None = None
    description: NonEmpty
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class Discovery(_Wire):
    services: list[ServiceDescription]


# ---- feedback ----


class OverrideReason(_Wire):
    reason: Coding | None = None
    userComment: str | None = None


class AcceptedSuggestion(_Wire):
    id: NonEmpty


class FeedbackItem(_Wire):
    card: NonEmpty
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: NonEmpty

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackItem:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("an accepted outcome needs acceptedSuggestions")
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("an overridden outcome cannot have acceptedSuggestions")
        return self


class FeedbackRequest(_Wire):
    feedback: list[FeedbackItem] = Field(min_length=1)


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON for the wire: no null members (the spec forbids them)."""
    out: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return out


def validate_context(hook: str, context: dict[str, Any]) -> PatientContext:
    """The hook's context as its typed model; `InvalidRequest` naming the field (`context.patientId: ...`).

    Validated here, not in `HookRequest`, because the context's shape depends on the hook: an unknown
    hook or a context that does not fit it is the client's error, a 400, never a crash later on.
    """
    model = CONTEXTS.get(hook)
    if model is None:
        raise InvalidRequest(f"hook: unsupported hook {hook!r}")
    try:
        return model.model_validate(context)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in ("context", *first["loc"]))
        raise InvalidRequest(f"{where}: {first['msg']}") from exc
