"""What a CDS service is: its discovery entry, the data it needs, and the handler that answers it.

A service's behaviour is its `handler`, not a type tag that a dispatcher switches on: the answerer
does what every hook call shares (context, data, deadline), then hands over to the handler. Adding a
service is one declaration in `registry.py`; nothing else in the answer path learns its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cds_service.hooks.wire import ServiceDescription

if TYPE_CHECKING:  # the handler's arguments are the answerer's types, and the answerer holds specs
    from cds_service.services.answer import HookAnswerer, HookCall

USAGE = "Read access to the patient's record (the prefetch queries) for the current user."


class Handler(Protocol):
    """The service-specific part of an answer: adds cards to `call.answer`, scoring through `answerer`.

    It may raise only what the answer path maps to a status (`InvalidRequest`); anything else is an
    internal error, which the API turns into an empty answer, never a 5xx.
    """

    async def __call__(self, answerer: HookAnswerer, call: HookCall) -> None: ...


@dataclass(frozen=True)
class ServiceSpec:
    id: str
    hook: str  # exactly one: a service offered on two hooks is declared twice
    title: str
    description: str
    required: tuple[str, ...]  # prefetch keys without which we answer 412
    prefetch: Mapping[str, str] = field(hash=False)  # key -> CDS Hooks 2.0 template (no FHIRPath)
    handler: Handler

    def __post_init__(self) -> None:
        unknown = [k for k in self.required if k not in self.prefetch]
        if unknown:  # such a key could never be had, so every call would fail: refuse at import
            raise ValueError(f"{self.id}: required keys without a prefetch template: {unknown}")

    def describe(self) -> ServiceDescription:
        """The discovery entry, from this spec's own templates (what we ask for is what we read)."""
        return ServiceDescription(
            hook=self.hook,
            id=self.id,
            title=self.title,
            description=self.description,
            prefetch=dict(self.prefetch),
            usageRequirements=USAGE,
        )
