"""Element access on plain FHIR JSON never raises on a wrong type: a malformed Condition costs only itself."""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.fhir.elements import condition_tokens

SNOMED = "http://snomed.info/sct"


def _condition(ident: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": ident,
        "code": {"coding": [{"system": SNOMED, "code": code}]},
        **extra,
    }


@pytest.mark.parametrize(
    "malformed",
    [
        {"verificationStatus": "confirmed"},
        {"verificationStatus": ["refuted"]},
        {"verificationStatus": {"coding": "refuted"}},
        {"encounter": "Encounter/e1"},
        {"code": 44054006},
    ],
)
def test_condition_tokens_survive_a_malformed_condition(malformed: dict[str, Any]) -> None:
    good = _condition("c1", "38341003", encounter={"reference": "Encounter/e1"})
    refuted = _condition("c2", "44054006", verificationStatus={"coding": [{"code": "refuted"}]})
    bad = {**_condition("c3", "55822004"), **malformed}
    tokens = condition_tokens([good, refuted, bad])
    assert "SNOMED/38341003" in tokens and "SNOMED/44054006" not in tokens
    assert condition_tokens([good, refuted, bad], "e1")[:1] == ["SNOMED/38341003"]
