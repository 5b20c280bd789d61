"""One budget for everything outbound (hardening issue): a FHIR server that trickles, floods or pages forever
costs at most the hook's fetch budget, and the EHR's token goes only where it may.

The EHR's FHIR server is mocked with respx (the one mock the project allows); everything else is real.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx

from cds_service.core.errors import FhirFetchError
from cds_service.core.settings import Settings
from cds_service.fhir.client import FhirClient
from cds_service.services.answer import fhir_server_allowed

BASE = "https://fhir.ehr.test/r4"


class Trickle(httpx.AsyncByteStream):
    """A body sent one byte every `pause` seconds: each read is quick, the whole never ends in time."""

    def __init__(self, pause: float, size: int = 10_000) -> None:
        self.pause, self.size = pause, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.size):
            await asyncio.sleep(self.pause)
            yield b" "


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_trickling_server_costs_the_budget_not_its_pace() -> None:
    async def go() -> float:
        with respx.mock:
            respx.get(f"{BASE}/Patient/p1").mock(return_value=httpx.Response(200, stream=Trickle(0.01)))
            async with httpx.AsyncClient() as http:
                client = FhirClient(BASE, "token", http)
                started = time.monotonic()
                with pytest.raises(FhirFetchError, match="timed out"):
                    await client.read("Patient/p1", time.monotonic() + 0.3)
                return time.monotonic() - started

    # 10,000 bytes at 10 ms each would take 100 s; the budget is 0.3 s (the bound is generous: a hang guard)
    assert run(go()) < 5.0


def test_a_body_larger_than_the_cap_is_refused_while_streaming() -> None:
    big = json.dumps({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation"}}] * 50_000})

    async def go() -> None:
        with respx.mock:
            respx.get(f"{BASE}/Observation").mock(return_value=httpx.Response(200, content=big.encode()))
            async with httpx.AsyncClient() as http:
                client = FhirClient(BASE, None, http, max_bytes=100_000)
                with pytest.raises(FhirFetchError, match="larger than 100000 bytes"):
                    await client.read("Observation", time.monotonic() + 5)
                roomy = FhirClient(BASE, None, http, max_bytes=10 * len(big))
                assert (await roomy.read("Observation", time.monotonic() + 5))["resourceType"] == "Bundle"

    run(go())


def test_one_hook_call_sends_at_most_its_request_cap_all_pages_included() -> None:
    def page(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params.get("page", "0"))
        body = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Condition", "id": f"c{n}"}}],
            "link": [{"relation": "next", "url": f"{BASE}/Condition?page={n + 1}"}],
        }
        return httpx.Response(200, json=body)

    async def go() -> int:
        with respx.mock:
            route = respx.get(f"{BASE}/Condition").mock(side_effect=page)
            async with httpx.AsyncClient() as http:
                client = FhirClient(BASE, None, http, max_pages=1000, max_requests=5)
                first = await client.read("Condition?page=0", time.monotonic() + 5)
                with pytest.raises(FhirFetchError, match="more than 5 FHIR requests"):
                    await client.search_all(first, time.monotonic() + 5)
                return route.call_count

    assert run(go()) == 5


@pytest.mark.parametrize(
    ("url", "dev", "allowed", "expected"),
    [
        ("https://fhir.ehr.test/r4", False, [], True),
        ("http://fhir.ehr.test/r4", False, [], False),  # the token would travel in clear text
        ("http://fhir.ehr.test/r4", True, [], False),  # even in development, only loopback may be http
        ("http://127.0.0.1:8080/fhir", True, [], True),
        ("http://127.0.0.1:8080/fhir", False, [], False),
        ("https://fhir.ehr.test/r4", False, ["https://other.test"], False),  # an allow-list is exact
        ("https://FHIR.ehr.test/r4", False, ["https://fhir.ehr.test/"], True),
    ],
)
def test_the_token_goes_only_to_allowed_origins(url: str, dev: bool, allowed: list[str], expected: bool) -> None:
    settings = Settings(dev_mode=dev, data_dir=Path("unused"), fhir_allowed_origins=allowed)
    assert fhir_server_allowed(url, settings) is expected


def test_an_issuer_with_its_own_list_is_held_to_it() -> None:
    """The EHR's token goes only to the FHIR servers of the EHR that sent it: one issuer's hooks cannot make
    us send its token (or fetch) from another EHR's server."""
    settings = Settings(
        data_dir=Path("unused"),
        fhir_origins_by_issuer={"https://ehr-a.test/": ["https://fhir.ehr-a.test"]},
        fhir_allowed_origins=["https://fhir.ehr-b.test"],
    )
    assert fhir_server_allowed("https://fhir.ehr-a.test/r4", settings, "https://ehr-a.test/")
    assert not fhir_server_allowed("https://fhir.ehr-b.test/r4", settings, "https://ehr-a.test/")
    assert fhir_server_allowed("https://fhir.ehr-b.test/r4", settings, "https://ehr-b.test/")  # the global list
    assert not fhir_server_allowed("https://fhir.ehr-a.test/r4", settings, "https://ehr-b.test/")
