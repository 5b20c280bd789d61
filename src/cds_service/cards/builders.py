"""Cards from model findings and from order-safety findings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cds_service.cards.drafts import proposed_medication_request, provisional_condition
from cds_service.cards.render import (
    capped,
    finding_detail,
    md,
    override_reasons,
    shown_probability,
    source,
    summary,
)
from cds_service.fhir.canonical import SAFETY_OVERRIDES, SUGGESTION_OVERRIDES
from cds_service.hooks.wire import Action, Card, Suggestion
from cds_service.ml.contract import Finding
from cds_service.safety.context import FactorFinding, recommended_action
from cds_service.safety.orders import AllergyFinding, Drug, DuplicateFinding, InteractionFinding

EVIDENCE_EXTENSION = "https://cds-service.dev/cds-hooks/evidence"


def evidence_extension(f: Finding) -> dict[str, Any]:
    """Machine-readable evidence (CDS Hooks 2.0 `extension`): the very resources behind a suggestion."""
    items = []
    for e in f.evidence:
        item: dict[str, Any] = {"reference": e.source, "share": round(e.share, 4)}
        if e.drop is not None:
            item["scoreDropWithout"] = round(e.drop, 4)
        if e.quote:
            item["quote"] = e.quote
        items.append(item)
    body: dict[str, Any] = {"probability": round(capped(f.probability), 4)}
    if items:
        body["evidence"] = items
    if f.indication:
        body["indication"] = f.indication["reference"]
    return {EVIDENCE_EXTENSION: body}


def diagnosis_card(
    f: Finding, patient_id: str, encounter_id: str | None, version: str | None, card_url: str | None
) -> Card:
    where = "encounter diagnosis" if encounter_id else "problem-list entry"
    condition = provisional_condition(f.token, f.display, patient_id, encounter_id)
    return Card(
        summary=summary(f"Consider {f.display} ({shown_probability(f.probability)} likely)"),
        detail=finding_detail(f, "likely diagnosis not yet on the problem list"),
        indicator="info",
        source=source("diagnosis-suggestion", version, card_url),
        suggestions=[
            Suggestion(
                label=summary(f"Add provisional {where}: {f.display}"),
                actions=[
                    Action(type="create", description=f"Add {f.display} as a provisional {where}", resource=condition)
                ],
            )
        ],
        selectionBehavior="at-most-one",
        overrideReasons=override_reasons(SUGGESTION_OVERRIDES),
        extension=evidence_extension(f),
    )


def medication_card(
    f: Finding,
    patient_id: str,
    encounter_id: str | None,
    requester: str | None,
    version: str | None,
    card_url: str | None,
    allergies_checked: bool = True,
    unrecognised: int = 0,
) -> Card:
    """`allergies_checked`: False when the allergy check could not run or read every allergy record;
    `unrecognised`: drugs of the record the knowledge layer could not identify. The card then says what was
    not checked instead of claiming the check."""
    request = proposed_medication_request(f.token, f.display, patient_id, encounter_id, requester)
    checked = (
        "Checked against active medications, drafts and allergies: no interaction in the cited rules."
        if allergies_checked
        else "Checked against active medications and drafts: no interaction in the cited rules. **Not checked "
        "against allergies**: the allergy check could not read the whole allergy list; review it before ordering."
    )
    if unrecognised:
        drugs, verb = ("medication", "was") if unrecognised == 1 else ("medications", "were")
        checked += (
            f" **{unrecognised} {drugs} of the record could not be identified** and {verb} not checked against it."
        )
    why = "medication commonly ordered for patients like this one"
    if f.indication:
        recorded = f", recorded {f.indication['recorded']}" if f.indication.get("recorded") else ""
        why += f", for **{md(f.indication['display'])}**{recorded} ({md(f.indication['reference'])})"
        checked += f" Indication: {md(f.indication['citation'])}."
    for_what = f" for {f.indication['display']}" if f.indication else ""
    return Card(
        summary=summary(f"Consider {f.display}{for_what} ({shown_probability(f.probability)})"),
        detail=finding_detail(f, why) + "\n\n" + checked,
        indicator="info",
        source=source("medication-recommendation", version, card_url),
        suggestions=[
            Suggestion(
                label=summary(f"Draft order: {f.display}"),
                actions=[Action(type="create", description=f"Propose {f.display}", resource=request)],
            )
        ],
        selectionBehavior="at-most-one",
        overrideReasons=override_reasons(SUGGESTION_OVERRIDES),
        extension=evidence_extension(f),
    )


def _remove(draft_ref: str, name: str) -> Suggestion:
    return Suggestion(
        label=summary(f"Remove the draft order for {name}"),
        isRecommended=True,
        actions=[Action(type="delete", description=f"Remove draft {name}", resourceId=draft_ref)],
    )


def context_lines(factors: Sequence[FactorFinding]) -> list[str]:
    """What the record says about the rule's contextual factors: those present with their evidence, the
    values to review (or that none is recorded), and the HL7 PDDI CDS tier they lead to."""
    lines = []
    for f in factors:
        if f.effect == "review":
            lines.append(f"- To review, {md(f.label)}: {md(f.evidence) if f.present else 'none in the record'}")
        elif f.present:
            verb = "Raises the risk" if f.effect == "raises" else "Lowers the risk"
            lines.append(f"- {verb}: {md(f.label)} ({md(f.evidence)})")
    action = recommended_action(factors)
    if action:
        lines.append(f"- Recommended action for this patient: **{action}**")
    return lines


def interaction_card(f: InteractionFinding, card_url: str | None = None, factors: Sequence[FactorFinding] = ()) -> Card:
    """`factors`: the rule's contextual factors as read from this record (`safety.context`)."""
    i = f.interaction
    where = "another draft order" if f.other_is_draft else "an active medication"
    detail = "\n".join(
        [
            f"**{md(f.draft.name)}** (draft) interacts with {where}, **{md(f.other.name)}** ({md(f.other.reference)}).",
            "",
            f"- Severity: **{i.severity}** ({md(i.ingredient_a)} + {md(i.ingredient_b)})",
            f"- Mechanism: {md(i.mechanism)}",
            *([f"- Management: {md(i.advice)}"] if i.advice else []),
            *(
                ["- Applied locally (skin, eye or ear): systemic exposure is small, so this is for information."]
                if i.local
                else []
            ),
            *([] if i.local else context_lines(factors)),
            f"- Source: {md(i.source)}",
        ]
    )
    return Card(
        summary=summary(f"{i.severity.capitalize()} interaction: {f.draft.name} with {f.other.name}"),
        detail=detail,
        indicator="info" if i.local else "critical" if i.severity == "contraindicated" else "warning",
        source=source("drug-interaction", None, card_url),
        suggestions=[_remove(f.draft.reference, f.draft.name)],
        selectionBehavior="at-most-one",
        overrideReasons=override_reasons(SAFETY_OVERRIDES),
    )


def allergy_card(f: AllergyFinding, card_url: str | None = None) -> Card:
    """Ingredient and class matches are as critical as the allergy's criticality says; a cross-reactive
    class (penicillin allergy, cephalosporin draft) is a warning with its evidence, never critical."""
    critical = f.criticality == "high" and f.match != "cross-reactive"
    how = {
        "ingredient": "contains it",
        "class": "belongs to its class",
        "cross-reactive": "belongs to a cross-reactive class",
    }[f.match]
    detail = (
        f"The patient has a documented allergy or intolerance to **{md(f.substance)}** ({md(f.allergy)}"
        f"{', criticality ' + md(f.criticality) if f.criticality else ''}), and the draft order "
        f"**{md(f.draft.name)}** {how}."
    )
    if f.note:
        detail += f" {md(f.note)}."
    if not f.status_read:
        detail += " The allergy record's clinical or verification status could not be read, so it is taken as active."
    kind = "Possible cross-reactivity" if f.match == "cross-reactive" else "Allergy"
    return Card(
        summary=summary(f"{kind}: {f.draft.name} with documented {f.substance} allergy"),
        detail=detail,
        indicator="critical" if critical else "warning",
        source=source("drug-allergy", None, card_url),
        suggestions=[_remove(f.draft.reference, f.draft.name)],
        selectionBehavior="at-most-one",
        overrideReasons=override_reasons(SAFETY_OVERRIDES),
    )


def unknown_drug_card(drafts: list[Drug], card_url: str | None = None) -> Card:
    """Drafts the drug knowledge layer cannot identify: silence about them would read as "no interaction"."""
    names = ", ".join(f"**{md(d.name)}**" for d in drafts)
    subject = "it was" if len(drafts) == 1 else "they were"
    detail = (
        f"{names} could not be identified as a known drug ingredient, so {subject} **not checked** for"
        " interactions, allergies or duplicate therapy. Check them against the medication and allergy lists"
        " before signing."
    )
    head = f"Not checked: {drafts[0].name}" + (f" and {len(drafts) - 1} more" if len(drafts) > 1 else "")
    return Card(
        summary=summary(f"{head} (drug not recognised)"),
        detail=detail,
        indicator="warning",
        source=source("drug-interaction", None, card_url),
    )


def duplicate_card(f: DuplicateFinding, card_url: str | None = None) -> Card:
    detail = (
        f"The draft **{md(f.draft.name)}** shares {md(', '.join(f.shared))} with the active medication "
        f"**{md(f.active.name)}** ({md(f.active.reference)})."
    )
    return Card(
        summary=summary(f"Duplicate therapy: {f.draft.name} duplicates active {f.active.name}"),
        detail=detail,
        indicator="warning",
        source=source("duplicate-therapy", None, card_url),
        suggestions=[_remove(f.draft.reference, f.draft.name)],
        selectionBehavior="at-most-one",
        overrideReasons=override_reasons(SAFETY_OVERRIDES),
    )


# check -> (card topic, the check's name, what the drafts are checked for, the record it reads)
CHECKS: dict[str, tuple[str, str, str, str]] = {
    "interactions": ("drug-interaction", "Interaction check", "interactions", "medication"),
    "allergies": ("drug-allergy", "Allergy check", "the patient's documented allergies", "allergy"),
    "duplicates": ("duplicate-therapy", "Duplicate-therapy check", "duplicate therapy", "medication"),
}


def partial_list_card(check: str, key: str, origin: str, card_url: str | None = None) -> Card:
    """What the physician is told when the data a safety check reads arrived incomplete (a malformed Bundle,
    a search the EHR sent only in part, a fetch that failed): the check ran on what arrived, and says so."""
    topic, name, against, kind = CHECKS[check]
    what = "could not be read" if origin == "missing" else "arrived incomplete"
    head = f"{name} covered part of the record: the {kind} list {what}"
    detail = (
        f"The {kind} list (`{md(key)}`) {what}, so the draft orders were checked for {against} only against "
        f"what arrived. A {kind} that is not in it was **not checked**. Review the full {kind} list before signing."
    )
    return Card(summary=summary(head), detail=detail, indicator="warning", source=source(topic, None, card_url))


def unchecked_card(check: str, failed: bool, unreadable: int, card_url: str | None = None) -> Card:
    """What a safety check that did not finish tells the physician, so that its silence is never read as
    "nothing found": `failed`, it could not run at all; else it could not read `unreadable` records."""
    topic, name, against, kind = CHECKS[check]
    if failed:
        head = f"{name} failed: draft orders NOT checked for {against}"
        detail = (
            f"The {name.lower()} could not run on this record, so the draft orders were **not checked** for "
            f"{against}. Review the {kind} list before signing."
        )
    else:
        records = f"{kind} record" + ("" if unreadable == 1 else "s")
        head = f"{name} incomplete: {unreadable} {records} could not be read"
        detail = (
            f"{unreadable} {records} could not be fully read (malformed data), so the draft orders may **not** "
            f"have been checked against {'it' if unreadable == 1 else 'them'}; the other {kind} records were "
            f"checked. Review the {kind} list before signing."
        )
    return Card(summary=summary(head), detail=detail, indicator="warning", source=source(topic, None, card_url))
