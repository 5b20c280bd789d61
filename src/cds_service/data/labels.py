"""What counts as a label: new-onset disorder diagnoses and medications ordered at an encounter."""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.timeline.events import EventKind, PatientTimeline

# SNOMED semantic tags that are not diseases: social determinants ("Received higher education
# (finding)", "Full-time employment (situation)") dominate Synthea's conditions and are not diagnoses.
NON_DISORDER_TAGS = ("(finding)", "(situation)", "(person)", "(observable entity)", "(regime/therapy)")
# ICD-10-CM chapters that are symptoms (R), external causes (V-Y) or factors influencing health status
# and contact with services, including social determinants (Z).
NON_DISORDER_ICD_CHAPTERS = ("R", "V", "W", "X", "Y", "Z")


def is_disorder(token: str, display: str) -> bool:
    system, _, code = token.partition("/")
    if system == "SNOMED":
        return not display.rstrip().endswith(NON_DISORDER_TAGS)
    if system in ("ICD10CM", "ICD10"):
        return bool(code) and not code.upper().startswith(NON_DISORDER_ICD_CHAPTERS)
    return False


@dataclass(frozen=True, slots=True)
class EncounterLabels:
    encounter_id: str
    start: float
    class_code: str
    diagnoses: tuple[str, ...]  # new-onset disorder tokens recorded at the encounter
    medications: tuple[str, ...]  # medication tokens ordered (MedicationRequest) at the encounter
    known_diagnoses: tuple[str, ...]  # every diagnosis token recorded at it: the order hooks know these


def encounter_labels(timeline: PatientTimeline) -> list[EncounterLabels]:
    """Labels for every encounter that has some history strictly before its start, in time order."""
    first_seen: dict[str, float] = {}
    for event in timeline.events:
        if event.kind is EventKind.CONDITION:
            first_seen.setdefault(event.token, event.time)
    first_event_time = min((e.time for e in timeline.events), default=None)

    by_encounter: dict[str, list[int]] = {}
    for i, event in enumerate(timeline.events):
        if event.encounter is not None:
            by_encounter.setdefault(event.encounter, []).append(i)

    out: list[EncounterLabels] = []
    for info in sorted(timeline.encounters.values(), key=lambda e: e.start):
        if first_event_time is None or first_event_time >= info.start:
            continue  # no history before this encounter
        recorded = [timeline.events[i] for i in by_encounter.get(info.id, [])]
        known = tuple(dict.fromkeys(e.token for e in recorded if e.kind is EventKind.CONDITION))
        new_dx = tuple(
            dict.fromkeys(
                e.token
                for e in recorded
                if e.kind is EventKind.CONDITION
                and is_disorder(e.token, e.display)
                and first_seen.get(e.token, e.time) >= info.start  # not known before: new onset
            )
        )
        meds = tuple(
            dict.fromkeys(
                e.token
                for e in recorded
                if e.kind is EventKind.MEDICATION and e.source.startswith("MedicationRequest/")
            )
        )
        out.append(EncounterLabels(info.id, info.start, info.class_code, new_dx, meds, known))
    return out
