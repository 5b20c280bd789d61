"""Request body size limit as plain ASGI middleware: refuse with 413 before reading an oversized body.

Plain ASGI rather than a FastAPI dependency because the refusal must come before the framework reads
(and buffers) the body: a declared length over the limit is refused unread, and a stream that grows
over it is cut off at the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cds_service.api.errors import body_too_large


class _TooLarge(Exception):
    """The streamed body grew over the limit (raised and caught inside this module only)."""


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await body_too_large(self.max_bytes)(scope, receive, send)
            return
        try:
            body = await self._read(receive)
        except _TooLarge:
            await body_too_large(self.max_bytes)(scope, receive, send)
            return
        if body is None:
            return  # client went away: nobody to answer
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, read first (the app would anyway) so that an oversized stream is refused
        cleanly; None if the client went away."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
