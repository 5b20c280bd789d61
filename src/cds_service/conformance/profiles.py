"""The FHIR conformance resources in `fhir_profiles/`, generated from the code that they describe.

`python -m cds_service.conformance.profiles fhir_profiles` rewrites them; a test fails if the files drift from
this module. `problems(resource, profile)` checks an instance against a profile's differential
(cardinality, fixed codes and patterns): the subset of validation our own profiles use.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cds_service.fhir.canonical import (
    CANONICAL_BASE,
    CARD_TOPIC_SYSTEM,
    CARD_TOPICS,
    CONDITION_PROFILE,
    MEDICATION_REQUEST_PROFILE,
    OVERRIDE_REASON_SYSTEM,
    OVERRIDE_REASON_VALUESET,
    OVERRIDE_REASONS,
    RISK_ASSESSMENT_PROFILE,
)
from cds_service.hooks.prefetch import PATIENT_PREFETCH

TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"
META = {"version": "0.1.0", "status": "draft", "publisher": "cds-service", "date": "2026-11-23"}

# What the featuriser and safety rules read from each resource type (documentation for integrators).
ELEMENTS_READ = {
    "Patient": "birthDate, gender",
    "Encounter": "class, type, period, status",
    "Condition": "code, onset[x], recordedDate, encounter, verificationStatus, clinicalStatus",
    "MedicationRequest": "medication[x], authoredOn, status, encounter (active ones for interaction checks)",
    "Medication": "code (when a MedicationRequest references it)",
    "AllergyIntolerance": "code, reaction.substance, clinicalStatus, verificationStatus, criticality",
    "Observation": "code, value[x] (Quantity), effective[x], encounter",
    "Procedure": "code, performed[x], encounter",
    "Immunization": "vaccineCode, occurrence[x], encounter",
    "DocumentReference": "content.attachment (text/plain, text/html; base64), date, context.encounter",
}


def _element(path: str, **rules: Any) -> dict[str, Any]:
    return {"id": path, "path": path, **rules}


def _profile(
    name: str, url: str, base: str, title: str, description: str, elements: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "id": url.rsplit("/", 1)[-1],
        "url": url,
        "name": name,
        "title": title,
        **META,
        "description": description,
        "fhirVersion": "4.0.1",
        "kind": "resource",
        "abstract": False,
        "type": base,
        "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{base}",
        "derivation": "constraint",
        "differential": {"element": elements},
    }


def _coding(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def conformance_resources() -> dict[str, dict[str, Any]]:
    capability = {
        "resourceType": "CapabilityStatement",
        "id": "cds-service-reads",
        "url": f"{CANONICAL_BASE}/CapabilityStatement/cds-service-reads",
        "name": "CdsServiceReads",
        "title": "What cds-service reads from the EHR (prefetch or FHIR server)",
        **META,
        "kind": "requirements",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "client",
                "documentation": "Prefetch templates (CDS Hooks 2.0 tokens only): "
                + "; ".join(f"{k}: {v}" for k, v in PATIENT_PREFETCH.items()),
                "resource": [
                    {
                        "type": kind,
                        "documentation": f"Elements used: {elements}",
                        "interaction": [{"code": "read" if kind in ("Patient", "Medication") else "search-type"}],
                        **(
                            {}
                            if kind in ("Patient", "Medication")
                            else {"searchParam": [{"name": "patient", "type": "reference"}]}
                        ),
                    }
                    for kind, elements in ELEMENTS_READ.items()
                ],
            }
        ],
    }
    condition = _profile(
        "CdsSuggestedCondition",
        CONDITION_PROFILE,
        "Condition",
        "Condition suggested by cds-service",
        "A provisional diagnosis a clinician accepts from a card: never confirmed by the service itself.",
        [
            _element("Condition.clinicalStatus", min=1),
            _element(
                "Condition.verificationStatus",
                min=1,
                patternCodeableConcept=_coding(f"{TERMINOLOGY}/condition-ver-status", "provisional"),
            ),
            _element("Condition.category", min=1),
            _element("Condition.code", min=1),
            _element("Condition.subject", min=1),
            _element("Condition.recordedDate", min=1),
        ],
    )
    medication_request = _profile(
        "CdsSuggestedMedicationRequest",
        MEDICATION_REQUEST_PROFILE,
        "MedicationRequest",
        "MedicationRequest proposed by cds-service",
        "A proposal the clinician may turn into an order: status draft, intent proposal.",
        [
            _element("MedicationRequest.status", min=1, fixedCode="draft"),
            _element("MedicationRequest.intent", min=1, fixedCode="proposal"),
            _element("MedicationRequest.medication[x]", min=1, type=[{"code": "CodeableConcept"}]),
            _element("MedicationRequest.subject", min=1),
            _element("MedicationRequest.authoredOn", min=1),
        ],
    )
    risk = _profile(
        "CdsRiskAssessment",
        RISK_ASSESSMENT_PROFILE,
        "RiskAssessment",
        "Diagnosis risk scored by cds-service",
        "Bulk scores: one prediction per diagnosis with its calibrated probability; basis references the evidence.",
        [
            _element("RiskAssessment.status", min=1, fixedCode="final"),
            _element("RiskAssessment.subject", min=1),
            _element("RiskAssessment.occurrence[x]", min=1),
            _element("RiskAssessment.method", min=1),
            _element("RiskAssessment.prediction", min=1),
            _element("RiskAssessment.prediction.outcome", min=1),
            _element("RiskAssessment.prediction.probability[x]", min=1, type=[{"code": "decimal"}]),
        ],
    )
    override_cs = {
        "resourceType": "CodeSystem",
        "id": "cds-override-reason",
        "url": OVERRIDE_REASON_SYSTEM,
        "name": "CdsOverrideReason",
        "title": "Why a clinician overrode a cds-service card",
        **META,
        "content": "complete",
        "caseSensitive": True,
        "concept": [{"code": c, "display": d} for c, d in OVERRIDE_REASONS.items()],
    }
    override_vs = {
        "resourceType": "ValueSet",
        "id": "cds-override-reason",
        "url": OVERRIDE_REASON_VALUESET,
        "name": "CdsOverrideReason",
        "title": "Override reasons offered on cds-service cards",
        **META,
        "compose": {"include": [{"system": OVERRIDE_REASON_SYSTEM}]},
    }
    topics = {
        "resourceType": "CodeSystem",
        "id": "cds-card-topic",
        "url": CARD_TOPIC_SYSTEM,
        "name": "CdsCardTopic",
        "title": "Topics of cds-service cards (card.source.topic)",
        **META,
        "content": "complete",
        "caseSensitive": True,
        "concept": [{"code": c, "display": d} for c, d in CARD_TOPICS.items()],
    }
    items = [capability, condition, medication_request, risk, override_cs, override_vs, topics]
    return {f"{r['resourceType']}-{r['id']}.json": r for r in items}


def _values(node: Any, segments: list[str]) -> list[Any]:
    if not segments:
        return node if isinstance(node, list) else [node]
    out: list[Any] = []
    for item in node if isinstance(node, list) else [node]:
        if not isinstance(item, dict):
            continue
        head = segments[0]
        keys = [k for k in item if k.startswith(head[:-3])] if head.endswith("[x]") else [head]
        for key in keys:
            if key in item:
                out.extend(_values(item[key], segments[1:]))
    return out


def problems(resource: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    """Where `resource` breaks the differential of `profile` (empty when it conforms)."""
    if resource.get("resourceType") != profile["type"]:
        return [f"resourceType is not {profile['type']}"]
    found = []
    for element in profile["differential"]["element"]:
        path = element["path"]
        values = _values(resource, path.split(".")[1:])
        if len(values) < element.get("min", 0):
            found.append(f"{path}: required")
        if "fixedCode" in element and any(v != element["fixedCode"] for v in values):
            found.append(f"{path}: must be {element['fixedCode']}")
        pattern = element.get("patternCodeableConcept")
        if pattern:
            wanted = {(c["system"], c["code"]) for c in pattern["coding"]}
            for v in values:
                have = {(c.get("system"), c.get("code")) for c in v.get("coding", [])} if isinstance(v, dict) else set()
                if not wanted <= have:
                    found.append(f"{path}: must include {sorted(wanted)}")
        for t in element.get("type", []):
            if t["code"] == "decimal" and any(not isinstance(v, int | float) for v in values):
                found.append(f"{path}: must be a decimal")
            if t["code"] == "CodeableConcept" and not any(
                k.endswith("CodeableConcept") for k in resource if k.startswith(path.split(".")[-1][:-3])
            ):
                found.append(f"{path}: must be a CodeableConcept")
    return found


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, resource in conformance_resources().items():
        path = out / name
        path.write_text(json.dumps(resource, indent=2) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "fhir_profiles")):
        print(p)
