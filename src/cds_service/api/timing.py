"""When a request arrived: the moment its deadline starts, stamped before anything reads its body.

The EHR's clock starts when it sends, so ours must start as early as we can see the request: reading
and parsing a large hook body is part of the time budget (`deadline_ms`), not free. Outermost ASGI
middleware; routes read the stamp through `received_at`.
"""

from __future__ import annotations

import time

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send


class ArrivalStamp:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["received"] = time.monotonic()
        await self.app(scope, receive, send)


def received_at(request: Request) -> float | None:
    """time.monotonic() when the request arrived; None when `ArrivalStamp` is not installed."""
    received: float | None = getattr(request.state, "received", None)
    return received
