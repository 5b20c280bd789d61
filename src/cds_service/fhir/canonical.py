"""Canonical URLs of the conformance resources in `fhir_profiles/` (one place; tests check both agree)."""

from __future__ import annotations

CANONICAL_BASE = "https://cds-service.dev/fhir"
CONDITION_PROFILE = f"{CANONICAL_BASE}/StructureDefinition/cds-suggested-condition"
MEDICATION_REQUEST_PROFILE = f"{CANONICAL_BASE}/StructureDefinition/cds-suggested-medicationrequest"
RISK_ASSESSMENT_PROFILE = f"{CANONICAL_BASE}/StructureDefinition/cds-risk-assessment"
OVERRIDE_REASON_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/cds-override-reason"
OVERRIDE_REASON_VALUESET = f"{CANONICAL_BASE}/ValueSet/cds-override-reason"
CARD_TOPIC_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/cds-card-topic"

# code -> display; the CodeSystem in fhir_profiles/ is generated from this table.
OVERRIDE_REASONS: dict[str, str] = {
    "benefit-outweighs-risk": "Benefit outweighs the risk for this patient",
    "will-monitor": "Will monitor or adjust the dose",
    "tolerated-before": "Patient has tolerated this before",
    "not-applicable": "Alert does not apply to this patient",
    "already-addressed": "Already addressed elsewhere in the record",
    "not-clinically-relevant": "Suggestion is not clinically relevant",
}
SAFETY_OVERRIDES = ("benefit-outweighs-risk", "will-monitor", "tolerated-before", "not-applicable")
SUGGESTION_OVERRIDES = ("already-addressed", "not-clinically-relevant", "not-applicable")

CARD_TOPICS: dict[str, str] = {
    "diagnosis-suggestion": "Suggested diagnosis",
    "medication-recommendation": "Recommended medication",
    "drug-interaction": "Drug-drug interaction",
    "drug-allergy": "Drug-allergy conflict",
    "duplicate-therapy": "Duplicate therapy",
}
