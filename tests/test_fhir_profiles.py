"""The conformance resources in fhir_profiles/: current, valid R4(B), and honoured by what we emit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from cds_service.cards.drafts import proposed_medication_request, provisional_condition
from cds_service.conformance.profiles import conformance_resources, problems

PROFILES = Path(__file__).parents[1] / "fhir_profiles"


def profile(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((PROFILES / f"StructureDefinition-{name}.json").read_text())
    return loaded


@pytest.mark.parametrize("name", sorted(conformance_resources()))
def test_files_are_current_and_valid_fhir(name: str) -> None:
    on_disk = json.loads((PROFILES / name).read_text())
    assert on_disk == conformance_resources()[name], "run: python -m cds_service.conformance.profiles fhir_profiles"
    get_fhir_model_class(on_disk["resourceType"]).model_validate(on_disk)


def test_suggested_condition_conforms_and_a_confirmed_one_does_not() -> None:
    sd = profile("cds-suggested-condition")
    for encounter in (None, "e1"):
        condition = provisional_condition("SNOMED/44054006", "Diabetes mellitus type 2 (disorder)", "p1", encounter)
        assert problems(condition, sd) == []
        assert condition["meta"]["profile"] == [sd["url"]]
    condition["verificationStatus"]["coding"][0]["code"] = "confirmed"
    del condition["recordedDate"]
    assert len(problems(condition, sd)) == 2


def test_proposed_medication_request_conforms_and_an_order_does_not() -> None:
    sd = profile("cds-suggested-medicationrequest")
    request = proposed_medication_request("RXNORM/314076", "lisinopril 10 MG Oral Tablet", "p1", "e1", "Practitioner/x")
    assert problems(request, sd) == []
    request["intent"] = "order"
    assert problems(request, sd) == ["MedicationRequest.intent: must be proposal"]


def test_override_reasons_on_cards_come_from_the_code_system() -> None:
    from cds_service.cards.render import override_reasons
    from cds_service.fhir.canonical import SAFETY_OVERRIDES, SUGGESTION_OVERRIDES

    system = json.loads((PROFILES / "CodeSystem-cds-override-reason.json").read_text())
    codes = {c["code"]: c["display"] for c in system["concept"]}
    for coding in override_reasons(SAFETY_OVERRIDES + SUGGESTION_OVERRIDES):
        assert coding.system == system["url"] and codes[coding.code] == coding.display
