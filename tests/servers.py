"""Servers for end-to-end tests: our app under a real uvicorn, and a fake EHR FHIR server.

The app runs in a background thread of the test process (startup is fast and failures show in the
test's own traceback). The EHR's FHIR server is `FakeFhirServer` behind a respx router, handed to the app
through `create_app(fhir_transport=...)`: respx mocks only the FHIR server, with no global patching of
httpx, so the tests' own calls to the app (and JWKS fetches) go over the real network untouched.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import respx
import uvicorn

from cds_service.api.main import create_app
from cds_service.core.settings import Settings
from cds_service.hooks.examples import searchset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(
    settings: Settings, port: int | None = None, fhir_transport: httpx.AsyncBaseTransport | None = None
) -> Iterator[str]:
    port = port or free_port()
    app = create_app(settings, fhir_transport=fhir_transport)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class FakeFhirServer:
    """The EHR's FHIR server at `base`, serving one patient's resources (an `httpx.MockTransport` handler).

    Reads are `Patient/<id>`, searches `<Type>?patient=<id>`; types in `paged` answer in two pages
    linked by `next`. With no patient loaded, or for any other server, it answers 503 (unreachable).
    A request without the expected bearer token gets 401.
    """

    def __init__(self, base: str, token: str | None = None, paged: frozenset[str] = frozenset({"Observation"})) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.paged = paged
        self.calls: Counter[str] = Counter()  # requests per resource type
        self._by_type: dict[str, list[dict[str, Any]]] = {}

    def transport(self) -> httpx.MockTransport:
        """A transport whose respx router sends this server's URLs here and answers 503 for any other."""
        router = respx.MockRouter(assert_all_called=False)
        router.route(url__startswith=self.base + "/").mock(side_effect=self)
        router.route().mock(return_value=httpx.Response(503))
        return httpx.MockTransport(router.handler)

    @contextmanager
    def serving(self, resources: list[dict[str, Any]]) -> Iterator[Counter[str]]:
        """Serve `resources` for the duration; yields the request counts."""
        self.calls.clear()
        self._by_type = {}
        for r in resources:
            self._by_type.setdefault(r["resourceType"], []).append(r)
        try:
            yield self.calls
        finally:
            self._by_type = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if not self._by_type or not url.startswith(self.base + "/"):
            return httpx.Response(503)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return httpx.Response(401)
        kind, _, ident = request.url.path.removeprefix(httpx.URL(self.base).path).strip("/").partition("/")
        self.calls[kind] += 1
        found = self._by_type.get(kind, [])
        if ident:
            match = [r for r in found if r.get("id") == ident]
            return httpx.Response(200, json=match[0]) if match else httpx.Response(404)
        return httpx.Response(200, json=self._page(kind, found, request.url))

    def _page(self, kind: str, found: list[dict[str, Any]], url: httpx.URL) -> dict[str, Any]:
        if kind not in self.paged:
            return searchset(found)
        half = len(found) // 2
        if url.params.get("page") == "2":
            return searchset(found[half:])
        bundle = searchset(found[:half])
        bundle["link"] = [{"relation": "next", "url": str(url.copy_merge_params({"page": "2"}))}]
        return bundle
