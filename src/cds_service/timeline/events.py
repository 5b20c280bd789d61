"""The patient timeline: demographics and time-ordered coded events and notes, each tied to its source.

This is the one representation that training (bulk files) and the live hook (prefetch or the EHR's
FHIR server) share, so that the model sees at the bedside exactly what it saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class EventKind(IntEnum):
    """Resource family of an event; the model sees it as `token_type_ids`, so values are stable."""

    PAD = 0
    ENCOUNTER = 1
    CONDITION = 2
    MEDICATION = 3
    OBSERVATION = 4
    PROCEDURE = 5
    IMMUNIZATION = 6
    ALLERGY = 7
    NOTE = 8


@dataclass(slots=True)
class Event:
    time: float  # seconds since the epoch, UTC; never earlier than the start of its encounter
    kind: EventKind
    token: str  # code with its system, e.g. "SNOMED/44054006", "LOINC/4548-4"
    display: str
    source: str  # "Condition/abc": the resource card evidence will point at
    encounter: str | None = None  # id of the encounter it was recorded at
    value: float | None = None  # numeric observation value, binned later by the featuriser


@dataclass(slots=True)
class Note:
    time: float
    source: str  # "DocumentReference/abc" or "Composition/xyz"
    text: str
    title: str = ""
    encounter: str | None = None


@dataclass(slots=True)
class EncounterInfo:
    id: str
    start: float
    end: float | None
    class_code: str  # v3 ActCode: AMB, EMER, IMP, ...
    token: str | None


@dataclass
class PatientTimeline:
    patient_id: str
    birth_time: float | None
    sex: str  # administrative gender: female | male | other | unknown
    events: list[Event] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    encounters: dict[str, EncounterInfo] = field(default_factory=dict)

    def sort(self) -> None:
        self.events.sort(key=lambda e: (e.time, e.kind, e.token))
        self.notes.sort(key=lambda n: n.time)

    def age_years(self, at: float) -> float | None:
        return None if self.birth_time is None else (at - self.birth_time) / (365.25 * 86400)

    def before(self, cutoff: float, exclude_encounter: str | None = None) -> PatientTimeline:
        """Only what was known strictly before `cutoff`, minus anything recorded at `exclude_encounter`.

        This is the single leakage guard: training samples and live requests both go through it.
        """
        keep_events = [
            e
            for e in self.events
            if e.time < cutoff and (exclude_encounter is None or e.encounter != exclude_encounter)
        ]
        keep_notes = [
            n for n in self.notes if n.time < cutoff and (exclude_encounter is None or n.encounter != exclude_encounter)
        ]
        keep_encounters = {k: v for k, v in self.encounters.items() if v.start < cutoff and k != exclude_encounter}
        return PatientTimeline(self.patient_id, self.birth_time, self.sex, keep_events, keep_notes, keep_encounters)
