"""Reads from the EHR's FHIR server: bearer token, one total budget, Bundle pagination.

The access token is sent only to the `fhirServer` the hook named (never to a `next` link on another
origin) and is never logged. Every failure is a `FhirFetchError` whose message has no PHI and no token.

A hostile or broken server costs at most the budget: each request runs under the hook's deadline as a whole
(connect, headers, every chunk of the body: `asyncio.timeout`, not httpx's per-phase timeouts, which a server
trickling a byte at a time resets forever), bodies are streamed and cut at `max_bytes`, and one hook call
sends at most `max_requests` requests, all pages included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from cds_service.core.errors import FhirFetchError
from cds_service.fhir.bundles import entries, next_link

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


class FhirClient:
    def __init__(
        self,
        base_url: str,
        access_token: str | None,
        client: httpx.AsyncClient,
        max_pages: int = 20,
        max_bytes: int = 20_000_000,
        max_requests: int = 32,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self._token = access_token
        self._client = client
        self.max_pages = max_pages
        self.max_bytes = max_bytes
        self.max_requests = max_requests
        self.requests = 0  # sent so far by this client (one per hook call)

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON}
        if self._token and _origin(url) == _origin(self.base_url):
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _body(self, url: str, remaining: float) -> bytes:
        async with self._client.stream("GET", url, headers=self._headers(url), timeout=remaining) as response:
            if response.status_code != 200:
                raise FhirFetchError(f"FHIR server answered {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise FhirFetchError(f"FHIR response larger than {self.max_bytes} bytes")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise FhirFetchError(f"FHIR response larger than {self.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

    async def _get(self, url: str, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FhirFetchError("time budget spent before the FHIR request")
        if self.requests >= self.max_requests:
            raise FhirFetchError(f"more than {self.max_requests} FHIR requests for one hook call")
        self.requests += 1
        try:
            async with asyncio.timeout(remaining):  # the whole exchange, however the server paces it
                raw = await self._body(url, remaining)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise FhirFetchError("FHIR server timed out") from exc
        except httpx.HTTPError as exc:
            raise FhirFetchError(f"FHIR server unreachable ({type(exc).__name__})") from exc
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise FhirFetchError("FHIR server sent a body that is not JSON") from exc
        if not isinstance(body, dict) or "resourceType" not in body:
            raise FhirFetchError("FHIR server sent JSON that is not a FHIR resource")
        return body

    async def read(self, query: str, deadline: float) -> dict[str, Any]:
        """GET one query relative to the server base: a resource, or a searchset Bundle (first page)."""
        return await self._get(urljoin(self.base_url, query.lstrip("/")), deadline)

    async def search_all(self, first: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
        """Entries' resources of a Bundle and its following pages (up to `max_pages`)."""
        resources = entries(first)
        bundle, pages = first, 1
        while (url := next_link(bundle)) is not None:
            if pages >= self.max_pages:
                log.warning("FHIR search stopped after %d pages", pages)
                break
            if _origin(urljoin(self.base_url, url)) != _origin(self.base_url):
                log.warning("FHIR next link points at another origin: not followed")
                break
            bundle = await self._get(urljoin(self.base_url, url), deadline)
            resources.extend(entries(bundle))
            pages += 1
        return resources
