"""Treatment recommendations on the order hooks: safety checks of the draft orders, then the model.

Safety rules come first and need no model, so an interaction, allergy or duplicate-therapy card
survives any model failure. The model's medication candidates are scored from the record alone (not
the drafts), so the job is the very one patient-view precomputed; the drafts then filter them: a
candidate already drafted, or interacting with a draft, is not recommended.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from cds_service.cards.builders import allergy_card, duplicate_card, interaction_card
from cds_service.core.settings import Settings
from cds_service.fhir.bundles import entries
from cds_service.fhir.elements import Resource, condition_tokens
from cds_service.hooks.prefetch import PatientData
from cds_service.hooks.wire import Card, OrderSelectContext, OrderSignContext, PatientContext
from cds_service.ml.contract import Finding, ScoringJob
from cds_service.safety.orders import (
    Drug,
    active_drugs,
    check_allergies,
    check_duplicates,
    check_interactions,
    conflicts,
    drug_of,
)
from cds_service.services.answer import HookAnswerer, HookCall

MEDICATION_CANDIDATES = 4  # scored and explained per patient; the drafts then filter them
MOST_RECOMMENDATIONS = 2  # medication cards next to the safety cards (and never above max_cards)


def medication_job(context: PatientContext, data: PatientData, settings: Settings) -> ScoringJob:
    """Medication candidates given the record alone (not the drafts), so that the job patient-view
    precomputes is the very job the order hooks look up; drafts filter the candidates afterwards."""
    active = active_drugs(data.resources, exclude=set())
    return ScoringJob(
        head="medication",
        patient_id=context.patientId,
        resources=data.resources,
        cutoff=time.time(),
        encounter_id=context.encounterId,
        known_dx=condition_tokens(data.resources, context.encounterId) if context.encounterId else [],
        exclude=[d.token for d in active if d.token],
        avoid_drugs=[d.name for d in active],
        max_findings=MEDICATION_CANDIDATES,
        min_probability=settings.min_card_probability,
    )


def draft_drugs(context: OrderSignContext, resources: list[Resource]) -> tuple[list[Drug], list[Drug]]:
    """(all drafts, the ones to check): order-select checks only the selected drafts, order-sign all."""
    draft_resources = entries(context.draftOrders)
    # A draft may name its drug by reference to a Medication in the drafts or in the record.
    medications = {str(r.get("id")): r for r in draft_resources + resources if r.get("resourceType") == "Medication"}
    drafts = [d for r in draft_resources if (d := drug_of(r, medications)) is not None]
    if isinstance(context, OrderSelectContext):
        selected = set(context.selections)
        return drafts, [d for d in drafts if d.reference in selected]
    return drafts, drafts


def safety_cards(focus: list[Drug], drafts: list[Drug], resources: list[Resource], url: str) -> Iterator[Card]:
    """Interaction, allergy and duplicate-therapy cards for the drafts in `focus`."""
    active = active_drugs(resources, exclude={d.reference for d in drafts})
    seen: set[frozenset[str]] = set()
    for f in check_interactions(focus, active, drafts):
        pair = frozenset((f.draft.reference, f.other.reference))
        if pair not in seen:  # two selected drafts that interact would otherwise be warned about twice
            seen.add(pair)
            yield interaction_card(f, url)
    yield from (allergy_card(f, url) for f in check_allergies(focus, resources))
    yield from (duplicate_card(f, url) for f in check_duplicates(focus, active))


def against_drafts(findings: list[Finding], drafts: list[Drug], max_cards: int) -> list[Finding]:
    """Candidates that are neither drafted already nor in conflict with a draft, best first."""
    tokens = {d.token for d in drafts if d.token}
    names = [d.name for d in drafts]
    kept = [f for f in findings if f.token not in tokens and not conflicts(f.display, names)]
    return kept[: min(MOST_RECOMMENDATIONS, max_cards)]


async def check_orders(answerer: HookAnswerer, call: HookCall) -> None:
    """The order hooks' handler: safety cards, then the recommendations that survive the drafts."""
    context = call.context
    assert isinstance(context, OrderSignContext)  # validate_context guarantees it for order hooks
    drafts, focus = draft_drugs(context, call.data.resources)
    call.answer.cards.extend(safety_cards(focus, drafts, call.data.resources, answerer.settings.model_card_url))
    result = await answerer.score(call, medication_job(context, call.data, answerer.settings))
    if result is not None:
        result.findings = against_drafts(result.findings, drafts, answerer.settings.max_cards)
        answerer.model_cards(call, result)
