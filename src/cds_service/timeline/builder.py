"""FHIR resources (plain dicts, read leniently) to `PatientTimeline`s.

One malformed resource costs that resource, counted in the `ReadReport`; never the record.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from cds_service.fhir.elements import code_token, first_datetime, parse_datetime, ref_id, reference_of, reference_target
from cds_service.fhir.medications import medication_concept, medication_index
from cds_service.fhir.notes import note_text
from cds_service.fhir.reader import ReadReport, Resource, fhir_files, iter_file_resources
from cds_service.timeline.events import EncounterInfo, Event, EventKind, Note, PatientTimeline

PATIENT_LINKS = ("subject", "patient", "beneficiary")
MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")
NOTE_TYPES = ("DocumentReference", "Composition")


def patient_of(resource: Resource) -> str | None:
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    for link in PATIENT_LINKS:
        target = reference_target(resource.get(link))
        if target and ("Patient/" in target or target.startswith("urn:uuid:")):
            return ref_id(target)
    return None


def group_by_patient(resources: Iterable[Resource], report: ReadReport) -> dict[str, list[Resource]]:
    groups: dict[str, list[Resource]] = defaultdict(list)
    shared: list[Resource] = []  # Medication resources and others that carry no patient link
    for resource in resources:
        pid = patient_of(resource)
        if pid is None:
            if resource.get("resourceType") == "Medication":
                shared.append(resource)
            continue
        groups[pid].append(resource)
    for group in groups.values():
        if not any(r.get("resourceType") == "Patient" for r in group):
            report.warn("no-patient-resource", "resources that reference a Patient absent from the input")
        group.extend(shared)
    return dict(groups)


def iter_patient_records(paths: Iterable[Path], report: ReadReport) -> Iterator[tuple[str, list[Resource]]]:
    """(patient id, resources) per patient. JSON files (Synthea: one Bundle per patient) stream one file
    at a time; NDJSON (bulk export, one file per resource type) has to be gathered before grouping."""
    ndjson: list[Path] = []
    for root in paths:
        for path in fhir_files(root):
            if path.name.endswith((".ndjson", ".ndjson.gz")):
                ndjson.append(path)
                continue
            yield from group_by_patient(iter_file_resources(path, report), report).items()
    if ndjson:
        gathered = (r for path in ndjson for r in iter_file_resources(path, report))
        yield from group_by_patient(gathered, report).items()


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _quantity_value(resource: Resource) -> float | None:
    quantity = resource.get("valueQuantity")
    value = quantity.get("value") if isinstance(quantity, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class TimelineBuilder:
    """Builds one patient's timeline; `report` counts what had to be skipped."""

    def __init__(self, report: ReadReport | None = None) -> None:
        self.report = report or ReadReport()

    def build(self, patient_id: str, resources: list[Resource]) -> PatientTimeline:
        patient = next((r for r in resources if r.get("resourceType") == "Patient"), {})
        birth = parse_datetime(patient.get("birthDate"))
        sex = patient.get("gender") if patient.get("gender") in ("female", "male", "other") else "unknown"
        timeline = PatientTimeline(patient_id, _epoch(birth), str(sex))
        medications = medication_index(resources)

        for resource in resources:
            if resource.get("resourceType") == "Encounter":
                self._guard(self._add_encounter, timeline, resource)
        for resource in resources:
            rtype = resource.get("resourceType")
            if rtype in NOTE_TYPES:
                self._guard(self._add_note, timeline, resource)
            elif rtype in MEDICATION_TYPES:
                self._guard(lambda t, r: self._add_medication(t, r, medications), timeline, resource)
            elif rtype in self._handlers:
                self._guard(self._handlers[rtype], timeline, resource)
        timeline.sort()
        return timeline

    def _guard(
        self, handler: Callable[[PatientTimeline, Resource], None], timeline: PatientTimeline, r: Resource
    ) -> None:
        try:
            handler(timeline, r)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            self.report.warn("malformed-resource", f"{r.get('resourceType')}: {type(exc).__name__}")

    # --- per resource type -------------------------------------------------------------------

    def _add_encounter(self, timeline: PatientTimeline, r: Resource) -> None:
        start = first_datetime(r, "period.start", "period.end")
        if start is None:
            self.report.warn("undated-resource", "Encounter without period")
            return
        cls = r.get("class")
        class_code = str(cls.get("code")) if isinstance(cls, dict) and cls.get("code") else "UNK"
        types = r.get("type")
        coded = code_token(types[0]) if isinstance(types, list) and types else None
        eid = str(r.get("id"))
        timeline.encounters[eid] = EncounterInfo(
            eid, start.timestamp(), _epoch(first_datetime(r, "period.end")), class_code, coded[0] if coded else None
        )
        token, display = coded if coded else (f"ACTCODE/{class_code}", class_code)
        timeline.events.append(Event(start.timestamp(), EventKind.ENCOUNTER, token, display, reference_of(r), eid))

    def _event_time(
        self, timeline: PatientTimeline, r: Resource, own: datetime | None
    ) -> tuple[float, str | None] | None:
        """Event time, never before the start of the encounter it was recorded at (no look-ahead)."""
        eid = ref_id(reference_target(r.get("encounter")) or reference_target(r.get("context")))
        encounter = timeline.encounters.get(eid or "")
        times = [t for t in (_epoch(own), encounter.start if encounter else None) if t is not None]
        if not times:
            self.report.warn("undated-resource", f"{r.get('resourceType')} without a date")
            return None
        return max(times), (eid if encounter else None)

    def _add_coded(
        self, timeline: PatientTimeline, r: Resource, kind: EventKind, concept: Any, own: datetime | None
    ) -> None:
        coded = code_token(concept)
        if coded is None:
            self.report.warn("uncoded-resource", f"{r.get('resourceType')} without a usable code")
            return
        placed = self._event_time(timeline, r, own)
        if placed is not None:
            timeline.events.append(Event(placed[0], kind, coded[0], coded[1], reference_of(r), placed[1]))

    def _add_condition(self, timeline: PatientTimeline, r: Resource) -> None:
        own = first_datetime(r, "recordedDate", "onsetDateTime", "onsetPeriod.start")
        self._add_coded(timeline, r, EventKind.CONDITION, r.get("code"), own)

    def _add_procedure(self, timeline: PatientTimeline, r: Resource) -> None:
        own = first_datetime(r, "performedDateTime", "performedPeriod.start")
        self._add_coded(timeline, r, EventKind.PROCEDURE, r.get("code"), own)

    def _add_immunization(self, timeline: PatientTimeline, r: Resource) -> None:
        own = first_datetime(r, "occurrenceDateTime")
        self._add_coded(timeline, r, EventKind.IMMUNIZATION, r.get("vaccineCode"), own)

    def _add_allergy(self, timeline: PatientTimeline, r: Resource) -> None:
        own = first_datetime(r, "recordedDate", "onsetDateTime")
        self._add_coded(timeline, r, EventKind.ALLERGY, r.get("code"), own)

    def _add_medication(self, timeline: PatientTimeline, r: Resource, medications: dict[str, Resource]) -> None:
        own = first_datetime(r, "authoredOn", "effectiveDateTime", "effectivePeriod.start", "dateAsserted")
        self._add_coded(timeline, r, EventKind.MEDICATION, medication_concept(r, medications), own)

    def _add_observation(self, timeline: PatientTimeline, r: Resource) -> None:
        own = first_datetime(r, "effectiveDateTime", "effectivePeriod.start", "issued")
        placed = self._event_time(timeline, r, own)
        if placed is None:
            return
        source = reference_of(r)
        parts = [r] + [c for c in r.get("component") or [] if isinstance(c, dict)]
        for part in parts:
            coded = code_token(part.get("code"))
            if coded is None:
                continue
            token, display = coded
            if part is r and r.get("component"):
                continue  # a panel: its components carry the values
            value_concept = code_token(part.get("valueCodeableConcept"))
            if value_concept is not None:
                token, display = f"{token}={value_concept[0]}", f"{display}: {value_concept[1]}"
            event = Event(placed[0], EventKind.OBSERVATION, token, display, source, placed[1], _quantity_value(part))
            timeline.events.append(event)

    def _add_note(self, timeline: PatientTimeline, r: Resource) -> None:
        text = note_text(r)
        if text is None:
            return
        own = first_datetime(r, "date", "context.period.start", "created")
        encounter_ref = reference_target(r.get("encounter"))
        context = r.get("context")
        if encounter_ref is None and isinstance(context, dict):
            encounters = context.get("encounter")
            if isinstance(encounters, list) and encounters:
                encounter_ref = reference_target(encounters[0])
        placed = self._event_time(timeline, {**r, "encounter": {"reference": encounter_ref}}, own)
        if placed is None:
            return
        title = r.get("title") or (code_token(r.get("type")) or ("", ""))[1]
        timeline.notes.append(Note(placed[0], reference_of(r), text, str(title), placed[1]))

    @property
    def _handlers(self) -> dict[str, Callable[[PatientTimeline, Resource], None]]:
        return {
            "Condition": self._add_condition,
            "Procedure": self._add_procedure,
            "Immunization": self._add_immunization,
            "AllergyIntolerance": self._add_allergy,
            "Observation": self._add_observation,
        }


def build_timelines(paths: Iterable[Path], report: ReadReport) -> Iterator[PatientTimeline]:
    builder = TimelineBuilder(report)
    for patient_id, resources in iter_patient_records(paths, report):
        yield builder.build(patient_id, resources)
