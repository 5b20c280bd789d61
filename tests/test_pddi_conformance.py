"""Conformance against the HL7 PDDI CDS implementation guide's own test requests.

The guide (HL7/PDDI-CDS, see `fixtures/pddi-cds/README.md` for provenance) ships CDS Hooks requests for its two
exemplars, warfarin + NSAIDs and digoxin + cyclosporine. They are kept verbatim; `adapt` below turns each into
what an EHR would send to *our* services, and the real service answers it in-process with no model (safety
cards only). What the adapter changes, and why, is said next to each change; it never changes what a request
is about (the drugs, the patient's record, which draft is selected).

Expected: every warfarin + NSAID and digoxin + cyclosporine request gets an interaction card naming both drugs
(warning or critical); the guide's one negative design (scenario 1, topical diclofenac: "No special
precautions") gets no warning or critical interaction card. A case our service gets wrong is asserted as the
correct behaviour and marked `xfail(strict=True)` with the reason, so that fixing the service turns it green.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds_service.core.settings import Settings
from cds_service.hooks.prefetch import PATIENT_PREFETCH
from cds_service.hooks.wire import Card, HookRequest
from cds_service.services.answer import HookAnswer, HookAnswerer
from cds_service.services.registry import SERVICES

REQUESTS = Path(__file__).parent / "fixtures" / "pddi-cds" / "requests"

# Our service for each hook the guide's requests use. `medication-prescribe` is the pre-1.0 CDS Hooks hook
# that order-select and order-sign replaced; its `context.medications` are the orders being prescribed, all
# of them to be checked, which is order-sign's contract (order-select would need `selections`, which the old
# hook does not have).
SERVICE_FOR_HOOK = {
    "order-select": "treatment-recommendations",
    "order-sign": "treatment-recommendations-order-sign",
    "medication-prescribe": "treatment-recommendations-order-sign",
}
HOOK_FOR_SERVICE = {s.id: s.hook for s in SERVICES.values()}

# Our prefetch key for each FHIR resource type the guide prefetches.
KEY_FOR_TYPE = {
    "Patient": "patient",
    "Condition": "conditions",
    "MedicationRequest": "medications",
    "MedicationStatement": "medications",
    "MedicationDispense": "medications",
    "MedicationAdministration": "medications",
    "Medication": "medications",
    "AllergyIntolerance": "allergies",
    "Encounter": "encounters",
    "Observation": "observations",
    "Procedure": "procedures",
    "Immunization": "immunizations",
    "DocumentReference": "notes",
}
assert set(KEY_FOR_TYPE.values()) == set(PATIENT_PREFETCH)


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _resources_of(bundle: Any) -> list[dict[str, Any]]:
    """The resources of one of the guide's Bundles: entries are `{"resource": ...}`, or (in the pre-1.0
    scenario requests, which are not valid FHIR there) the bare resources themselves."""
    out = []
    for entry in bundle.get("entry") or [] if isinstance(bundle, dict) else []:
        resource = entry.get("resource", entry) if isinstance(entry, dict) else None
        if isinstance(resource, dict) and "resourceType" in resource:
            out.append(resource)
    return out


def _searched_type(bundle: dict[str, Any]) -> str | None:
    """The resource type an (empty) searchset Bundle answered, from its `self` link."""
    for link in bundle.get("link") or []:
        if link.get("relation") == "self":
            return str(link["url"]).split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    return None


def _guide_prefetch(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The guide's prefetched Bundles, wherever the request put them.

    CDS Hooks 1.0+ requests have `prefetch.<key>` = a Bundle. The pre-1.0 scenario requests put `prefetch`
    inside `context` and each item as a batch response `{"response": ..., "resource": Bundle}`; some of their
    items sit directly in `context` (`context.item2`, a misplaced brace in the guide's JSON), and one
    (warfarin scenario 04, `item4`) has `"resource": "Bundle"` with its `entry` beside it. All are read.
    """
    context = raw.get("context", {})
    items = [*(raw.get("prefetch") or {}).values(), *(context.get("prefetch") or {}).values()]
    items += [v for k, v in context.items() if k.startswith("item")]
    bundles = []
    for item in items:
        resource = item.get("resource", item)
        bundles.append(resource if isinstance(resource, dict) else {"resourceType": "Bundle", **item})
    return bundles


def adapt(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(our service id, the request an EHR would send it) for one of the guide's requests."""
    service_id = SERVICE_FOR_HOOK[raw["hook"]]
    context = {k: v for k, v in raw["context"].items() if k != "prefetch" and not k.startswith("item")}
    if raw["hook"] == "medication-prescribe":
        # The old hook's orders are `context.medications`, a Bundle of bare resources; order-sign's are
        # `context.draftOrders`, a Bundle of entries. Same orders, same ids, same status as the guide wrote.
        context["draftOrders"] = _bundle(_resources_of(context.pop("medications")))
    if "userId" not in context:
        # Pre-1.0 CDS Hooks carried the user at the top level (`user`, or `userId` in the guide's digoxin
        # requests); 1.0+ carries it in `context.userId`, which our strict context validation requires.
        context["userId"] = raw.get("userId") or raw.get("user")

    found: dict[str, list[dict[str, Any]]] = {key: [] for key in PATIENT_PREFETCH}
    searched: set[str] = set()  # our keys the guide asked about, even when its search found nothing
    for bundle in _guide_prefetch(raw):
        resources = _resources_of(bundle)
        kinds = {r["resourceType"] for r in resources} or {_searched_type(bundle)}
        for kind in kinds:
            assert kind in KEY_FOR_TYPE, f"no prefetch key of ours for {kind}"
            searched.add(KEY_FOR_TYPE[kind])
        for r in resources:
            found[KEY_FOR_TYPE[r["resourceType"]]].append(r)
    prefetch: dict[str, Any] = {}
    for key, resources in found.items():
        if key == "patient" and len(resources) == 1:
            prefetch[key] = resources[0]  # our template reads Patient/{{context.patientId}}: the resource
        elif resources or key in searched:
            prefetch[key] = _bundle(resources)  # found, or searched and found nothing: a searchset
        else:
            prefetch[key] = None  # never asked: CDS Hooks 2.0 `null`, "no data", never fetched

    hook_instance = raw["hookInstance"]
    try:
        uuid.UUID(hook_instance)
    except ValueError:  # our envelope requires a UUID; none of the guide's requests needs this today
        hook_instance = str(uuid.uuid5(uuid.NAMESPACE_URL, hook_instance))
    payload = {
        "hook": HOOK_FOR_SERVICE[service_id],
        "hookInstance": hook_instance,
        "fhirServer": raw["fhirServer"],  # kept; every key is prefetched, and `_no_fetch` proves none is fetched
        "context": context,
        "prefetch": prefetch,
    }
    return service_id, payload


def _no_fetch(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"the service fetched {request.url}: every key was prefetched")


def answer(service_id: str, payload: dict[str, Any]) -> HookAnswer:
    """The real service, in-process, with no model (safety cards only) and no network."""

    async def go() -> HookAnswer:
        async with httpx.AsyncClient(transport=httpx.MockTransport(_no_fetch)) as http:
            answerer = HookAnswerer(Settings(dev_mode=True, data_dir=Path("unused")), None, http)
            return await answerer.handle(SERVICES[service_id], HookRequest.model_validate(payload))

    return asyncio.run(go())


def interaction_cards(cards: list[Card]) -> list[Card]:
    return [c for c in cards if c.source.topic is not None and c.source.topic.code == "drug-interaction"]


def names_both(card: Card, a: str, b: str) -> bool:
    text = f"{card.summary}\n{card.detail or ''}".lower()
    return a in text and b in text


# --- the cases -------------------------------------------------------------------------------------------

CASES: dict[str, tuple[tuple[str, str] | None, str | None]] = {
    # file: ((drug a, drug b) the interaction card must name, or None for the guide's negative), xfail reason
    "warfarin-nsaids-order-select-no-coordination.json": (("warfarin", "ketorolac"), None),
    "warfarin-nsaids-order-select-coordination.json": (("warfarin", "ketorolac"), None),
    "warfarin-nsaids-order-sign-no-coordination.json": (("warfarin", "ketorolac"), None),
    "warfarin-nsaids-order-sign-coordination.json": (("warfarin", "ketorolac"), None),
    "digoxin-cyclosporine-order-select-no-coordination.json": (("digoxin", "cyclosporine"), None),
    "digoxin-cyclosporine-order-select-coordination.json": (("digoxin", "cyclosporine"), None),
    "digoxin-cyclosporine-order-sign-no-coordination.json": (("digoxin", "cyclosporine"), None),
    "digoxin-cyclosporine-order-sign-coordination.json": (("digoxin", "cyclosporine"), None),
    "multi-update-draft-orders-1.json": (("warfarin", "ketorolac"), None),
    "multi-update-draft-orders-2.json": (("digoxin", "cyclosporine"), None),
    "multi-update-draft-orders-3.json": (("warfarin", "ketorolac"), None),
    "multi-update-draft-orders-4.json": (("digoxin", "cyclosporine"), None),
    "request-warfarin-nsaid-scenario-01.json": (None, None),
    "request-warfarin-nsaid-scenario-02.json": (("warfarin", "ibuprofen"), None),
    "request-warfarin-nsaid-scenario-03.json": (
        ("warfarin", "ibuprofen"),
        None,
    ),
    "request-warfarin-nsaid-scenario-04.json": (
        ("warfarin", "ibuprofen"),
        None,
    ),
    "request-warfarin-nsaid-scenario-05.json": (
        ("warfarin", "ibuprofen"),
        None,
    ),
    "request-digoxin-cyclosporine-scenario-01.json": (
        ("digoxin", "cyclosporine"),
        None,
    ),
    "request-digoxin-cyclosporine-scenario-02.json": (
        ("digoxin", "cyclosporine"),
        None,
    ),
    "request-digoxin-cyclosporine-scenario-03.json": (("digoxin", "cyclosporine"), None),
    "request-digoxin-cyclosporine-scenario-04.json": (("digoxin", "cyclosporine"), None),
}


def test_every_copied_request_is_a_case() -> None:
    assert sorted(p.name for p in REQUESTS.glob("*.json")) == sorted(CASES)


def _params() -> list[Any]:
    out = []
    for name, (pair, reason) in sorted(CASES.items()):
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(name, pair, id=name.removesuffix(".json"), marks=marks))
    return out


@pytest.mark.parametrize(("name", "pair"), _params())
def test_the_guides_request_gets_the_guides_answer(name: str, pair: tuple[str, str] | None) -> None:
    service_id, payload = adapt(json.loads((REQUESTS / name).read_text(encoding="utf-8")))
    got = answer(service_id, payload)
    interactions = interaction_cards(got.cards)
    if pair is None:  # the guide's negative: no precaution to alert on
        assert not [c for c in interactions if c.indicator in ("warning", "critical")], [
            c.summary for c in interactions
        ]
        return
    a, b = pair
    hits = [c for c in interactions if names_both(c, a, b)]
    assert hits, f"no interaction card naming {a} and {b}: {[c.summary for c in got.cards]}, reasons {got.reasons}"
    assert all(c.indicator in ("warning", "critical") for c in hits)
    assert all(a in c.summary.lower() and b in c.summary.lower() for c in hits)


# The guide's warfarin + NSAID scenarios walk its decision tree (use-cases.md, "Warfarin + NSAIDs Logic Table"):
# each must end at the tree's recommended action, with the factor that put it there named on the card.
TIERS = {
    "request-warfarin-nsaid-scenario-02.json": ("Assess risk and take action if necessary", "Lowers the risk"),
    "request-warfarin-nsaid-scenario-03.json": ("Use only if benefit outweighs risk", "aged "),
    "request-warfarin-nsaid-scenario-04.json": ("Use only if benefit outweighs risk", "gastric ulcer"),
    "request-warfarin-nsaid-scenario-05.json": ("Use only if benefit outweighs risk", "aldosterone antagonist"),
}


@pytest.mark.parametrize("name", sorted(TIERS))
def test_the_warfarin_nsaid_card_ends_where_the_guides_tree_ends(name: str) -> None:
    service_id, payload = adapt(json.loads((REQUESTS / name).read_text(encoding="utf-8")))
    cards = [c for c in interaction_cards(answer(service_id, payload).cards) if names_both(c, "warfarin", "ibuprofen")]
    action, factor = TIERS[name]
    assert cards and all(f"**{action}.**" in (c.detail or "") for c in cards), [c.detail for c in cards]
    assert all(factor in (c.detail or "") for c in cards)
    other = {"Assess risk and take action if necessary", "Use only if benefit outweighs risk"} - {action}
    assert not any(f"**{o}.**" in (c.detail or "") for c in cards for o in other)


def test_the_digoxin_cyclosporine_card_shows_the_values_to_review() -> None:
    """Scenario 01 records a digoxin level: the card shows it (with its date); scenario 03 records an eGFR,
    no potassium: the card says no potassium is in the record."""
    first = answer(*adapt(json.loads((REQUESTS / "request-digoxin-cyclosporine-scenario-01.json").read_text())))
    detail = " ".join(
        c.detail or "" for c in interaction_cards(first.cards) if names_both(c, "digoxin", "cyclosporine")
    )
    assert "To review, most recent serum digoxin level: digoxin" in detail, detail
    third = answer(*adapt(json.loads((REQUESTS / "request-digoxin-cyclosporine-scenario-03.json").read_text())))
    detail = " ".join(
        c.detail or "" for c in interaction_cards(third.cards) if names_both(c, "digoxin", "cyclosporine")
    )
    assert "To review, most recent serum potassium: none in the record" in detail, detail


def test_the_adapter_keeps_what_the_guide_wrote() -> None:
    raw = json.loads((REQUESTS / "multi-update-draft-orders-2.json").read_text(encoding="utf-8"))
    service_id, payload = adapt(raw)
    assert service_id == "treatment-recommendations" and payload["hook"] == "order-select"
    context = payload["context"]
    assert context["selections"] == raw["context"]["selections"]
    assert context["draftOrders"] == raw["context"]["draftOrders"]
    assert context["userId"] == "Practitioner/COREPRACTITIONER1"  # from the top-level userId
    prefetch = payload["prefetch"]
    assert prefetch["patient"]["id"] == "f001"
    assert [r["resource"]["id"] for r in prefetch["medications"]["entry"]] == ["r311", "r302"]
    assert len(prefetch["observations"]["entry"]) == 5
    assert prefetch["allergies"] is None and prefetch["conditions"] is None  # never asked: "no data"

    old = json.loads((REQUESTS / "request-warfarin-nsaid-scenario-04.json").read_text(encoding="utf-8"))
    service_id, payload = adapt(old)
    assert service_id == "treatment-recommendations-order-sign"
    drafts = payload["context"]["draftOrders"]["entry"]
    assert [d["resource"]["id"] for d in drafts] == ["medicationrequest-warfarin-nsaid-nsaid-context"]
    kinds = sorted(e["resource"]["resourceType"] for e in payload["prefetch"]["medications"]["entry"])
    assert kinds == ["MedicationAdministration", "MedicationRequest"]
    assert payload["prefetch"]["patient"]["birthDate"] == "1982-01-07"
    assert (
        payload["prefetch"]["conditions"]["entry"][0]["resource"]["id"] == "condition-warfarin-nsaid-Hx-UGIB-prefetch"
    )
