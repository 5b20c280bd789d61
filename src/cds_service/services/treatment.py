"""Treatment recommendations on the order hooks: safety checks of the draft orders, then the model.

Safety rules come first and need no model, so an interaction, allergy or duplicate-therapy card
survives any model failure. The model's medication candidates are scored from the record alone (not
the drafts), so the job is the very one patient-view precomputed; the drafts then filter them: a
candidate already drafted, or interacting with a draft, is not recommended.

Each safety check (interactions, allergies, duplicates) runs on its own: one that fails costs only its
own cards, never the others' (an interaction warning survives a malformed allergy record). A check that
failed, or could not read every resource, is never silence: it is a reason on the answer (so in the
audit record) and a metric (`safety-check-failed:<check>`, `safety-check-partial:<check>`), it is
logged by check name and exception type only (no PHI), the physician gets a card saying what was not
checked, and the recommendations do not claim it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cds_service.cards.builders import (
    allergy_card,
    duplicate_card,
    interaction_card,
    partial_list_card,
    unchecked_card,
    unknown_drug_card,
)
from cds_service.core.settings import Settings
from cds_service.fhir.bundles import entries
from cds_service.fhir.elements import Resource, condition_tokens
from cds_service.hooks.prefetch import PatientData
from cds_service.hooks.wire import Card, OrderSelectContext, OrderSignContext, PatientContext
from cds_service.ml.contract import Finding, ScoringJob
from cds_service.safety.context import RecordContext
from cds_service.safety.orders import (
    Drug,
    active_drugs,
    allergy_check,
    check_duplicates,
    check_interactions,
    conflicts,
    drug_of,
    unknown_drugs,
)
from cds_service.services.answer import HookAnswerer, HookCall

log = logging.getLogger(__name__)
MEDICATION_CANDIDATES = 4  # scored and explained per patient; the drafts then filter them
MOST_RECOMMENDATIONS = 2  # medication cards next to the safety cards (and never above max_cards)
# The prefetch key each safety check reads (the first check names the card when the key arrived incomplete).
DATA_OF_CHECKS = {"medications": ("interactions", "duplicates"), "allergies": ("allergies",)}


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
    drafts = [d for i, r in enumerate(draft_resources) if (d := drug_of(r, medications, f"draft-{i + 1}")) is not None]
    if isinstance(context, OrderSelectContext):
        selected = set(context.selections)
        return drafts, [d for d in drafts if d.reference in selected]
    return drafts, drafts


@dataclass
class SafetyChecks:
    """The safety cards of one answer, and which checks did not (fully) run."""

    cards: list[Card] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # checks that raised: their cards are lost
    unreadable: dict[str, int] = field(default_factory=dict)  # check -> resources it could not fully read

    @property
    def incomplete(self) -> set[str]:
        """The checks whose silence must not be read as "nothing found"."""
        return set(self.failed) | {check for check, n in self.unreadable.items() if n}


def safety_checks(focus: list[Drug], drafts: list[Drug], resources: list[Resource], url: str) -> SafetyChecks:
    """Interaction, allergy and duplicate-therapy cards for the drafts in `focus`, each check isolated."""
    others = {d.reference for d in drafts}

    def interactions() -> tuple[list[Card], int]:
        seen: set[frozenset[str]] = set()
        cards = []
        active = active_drugs(resources, exclude=others)
        record = RecordContext(resources, active + drafts)
        for f in check_interactions(focus, active, drafts):
            pair = frozenset((f.draft.reference, f.other.reference))
            if pair not in seen:  # two selected drafts that interact would otherwise be warned about twice
                seen.add(pair)
                try:
                    factors = record.factors_of(f.interaction.context, exclude=pair)
                except Exception as exc:  # a factor we cannot read costs its lines, never the warning
                    log.warning("context factors unreadable (%s); warning without them", type(exc).__name__)
                    factors = ()
                cards.append(interaction_card(f, url, factors))
        return cards, 0

    def allergies() -> tuple[list[Card], int]:
        checked = allergy_check(focus, resources)
        return [allergy_card(f, url) for f in checked.findings], checked.unreadable

    def duplicates() -> tuple[list[Card], int]:
        return [duplicate_card(f, url) for f in check_duplicates(focus, active_drugs(resources, exclude=others))], 0

    out = SafetyChecks()
    rules: tuple[tuple[str, Callable[[], tuple[list[Card], int]]], ...] = (
        ("interactions", interactions),
        ("allergies", allergies),
        ("duplicates", duplicates),
    )
    for check, rule in rules:
        try:
            cards, unreadable = rule()
        except Exception as exc:  # the last line of defence: a failing check costs only its own cards
            log.error("safety check %s failed (%s); answering without its cards", check, type(exc).__name__)
            out.failed.append(check)
            continue
        out.cards.extend(cards)
        if unreadable:
            log.warning("safety check %s could not read %d resource(s); checked the rest", check, unreadable)
            out.unreadable[check] = unreadable
    return out


def against_drafts(findings: list[Finding], drafts: list[Drug]) -> list[Finding]:
    """Candidates that are neither drafted already nor in conflict with a draft, best first (the trust
    gates and the card limit come after, so a withheld candidate leaves room for the next)."""
    tokens = {d.token for d in drafts if d.token}
    names = [d.name for d in drafts]
    return [f for f in findings if f.token not in tokens and not conflicts(f.display, names)]


def _report_unknown_drugs(call: HookCall, focus: list[Drug], drafts: list[Drug], url: str) -> None:
    """A drug the knowledge layer cannot identify was not checked: a selected draft gets a card saying so,
    and every unknown drug is a reason in the audit record (`unknown-drug:draft` / `unknown-drug:active`)."""
    others = {d.reference for d in drafts}
    unknown_focus = unknown_drugs(focus)
    unknown_other = unknown_drugs([d for d in drafts if d not in focus] + active_drugs(call.data.resources, others))
    if unknown_focus:
        call.answer.cards.append(unknown_drug_card(unknown_focus, url))
        call.degrade("unknown-drug:draft")
    if unknown_other:
        call.degrade("unknown-drug:active")
    call.unrecognised = len(unknown_focus) + len(unknown_other)


async def check_orders(answerer: HookAnswerer, call: HookCall) -> None:
    """The order hooks' handler: safety cards, then the recommendations that survive the drafts."""
    context = call.context
    assert isinstance(context, OrderSignContext)  # validate_context guarantees it for order hooks
    url = answerer.settings.model_card_url
    drafts, focus = draft_drugs(context, call.data.resources)
    safety = safety_checks(focus, drafts, call.data.resources, url)
    call.answer.cards.extend(safety.cards)
    for check in safety.failed:
        call.degrade(f"safety-check-failed:{check}")
    for check, unreadable in safety.unreadable.items():
        for _ in range(unreadable):  # each resource the check could not read is counted
            call.degrade(f"safety-check-partial:{check}")
    call.unchecked |= safety.incomplete
    _report_unknown_drugs(call, focus, drafts, url)
    if focus:  # a check that did not finish says so: silence would read as "nothing found"
        for check in ("interactions", "allergies", "duplicates"):
            if check in safety.incomplete:
                failed = check in safety.failed
                call.answer.cards.append(unchecked_card(check, failed, safety.unreadable.get(check, 0), url))
        for key, checks in DATA_OF_CHECKS.items():  # data that arrived incomplete: the checks ran on part of it
            origin = call.data.origin.get(key)
            if origin in ("partial", "missing"):
                call.unchecked |= set(checks)
                card = partial_list_card(checks[0], key, origin, url)
                call.answer.cards.append(card)
    try:
        result = await answerer.score(call, medication_job(context, call.data, answerer.settings))
        if result is not None:
            result.findings = against_drafts(result.findings, drafts)
            answerer.model_cards(call, result, limit=min(MOST_RECOMMENDATIONS, answerer.settings.max_cards))
    except Exception as exc:  # the safety cards above must not be lost with the recommendations
        call.degrade("recommendation-error")
        log.error(
            "%s: recommendations failed (%s); answering with the safety cards", call.service.id, type(exc).__name__
        )
