"""Verifying the CDS client's JWT as CDS Hooks 2.0 asks (joserfc does the JOSE work).

Checks, in order: an asymmetric `alg` we accept (never `none` or HMAC); an allow-listed `iss`; its keys
from configuration, or from the JWKS URL on the allow-list (a `jku` header must name that same URL);
the signature; `aud` equal to the endpoint called; `exp`, `iat` and (if present) `nbf` with leeway; and
a `jti` never seen before (Redis when configured, else this process). Every failure is an `AuthError`
whose reason is logged and counted; the client only ever sees a bare 401.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from typing import Any

import httpx
import redis.asyncio as aioredis
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from cds_service.core.errors import AuthError
from cds_service.core.settings import Settings
from cds_service.core.telemetry import AUTH_FAILURES, REPLAY_CACHE_FALLBACKS

log = logging.getLogger(__name__)
JWKS_TTL_S = 300
JWKS_REFRESH_MIN_S = 30.0  # an unknown kid refetches the JWKS at most this often per URL


def _unverified_part(token: str, index: int) -> dict[str, Any]:
    try:
        part = token.split(".")[index]
        decoded = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError) as exc:
        raise AuthError("malformed token") from exc
    if not isinstance(decoded, dict):
        raise AuthError("malformed token")
    return decoded


class ReplayCache:
    """`jti` values seen, until their token expires: Redis (shared by all replicas) and this process.

    Every `jti` is also remembered in process, so a replay to the same process is caught even when Redis lost
    it (a restart without persistence). Redis calls have a short timeout and a circuit breaker: after a
    failure Redis is not asked again for `BREAKER_S`, and the local record decides alone. The trade-off,
    documented in README (Security): while Redis is down, a token replayed to *another* replica within its
    lifetime is not caught; the alternative, refusing every call, would block the EHR on our dependency.
    """

    REDIS_TIMEOUT_S = 0.1
    BREAKER_S = 5.0

    def __init__(self, redis_url: str | None) -> None:
        self._url = redis_url
        self._redis = self._connect()
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._redis_down_until = 0.0

    def _connect(self) -> aioredis.Redis | None:
        if not self._url:
            return None
        timeout = self.REDIS_TIMEOUT_S
        return aioredis.from_url(self._url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def _first_local(self, key: str, ttl_s: int) -> bool:
        now = time.time()
        with self._lock:
            if len(self._seen) > 100_000:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
            if self._seen.get(key, 0.0) > now:
                return False
            self._seen[key] = now + ttl_s
            return True

    async def first_use(self, key: str, ttl_s: int) -> bool:
        ttl_s = max(ttl_s, 1)
        local = self._first_local(key, ttl_s)
        if self._redis is None or time.monotonic() < self._redis_down_until:
            return local
        try:
            async with asyncio.timeout(2 * self.REDIS_TIMEOUT_S):
                shared = bool(await self._redis.set(f"cds:jti:{key}", b"1", nx=True, ex=ttl_s))
        except (OSError, TimeoutError, aioredis.RedisError) as exc:
            self._redis_down_until = time.monotonic() + self.BREAKER_S
            REPLAY_CACHE_FALLBACKS.inc()
            log.warning("replay cache: Redis unavailable (%s); checking jti in process for now", type(exc).__name__)
            return local
        return local and shared

    @property
    def redis_state(self) -> str:
        """For /readyz: "none" (not configured), "up", or "down" (the breaker is open)."""
        if self._redis is None:
            return "none"
        return "down" if time.monotonic() < self._redis_down_until else "up"

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = self._connect()  # usable again on a new loop


class JwtVerifier:
    def __init__(self, settings: Settings, http: httpx.AsyncClient, replay: ReplayCache) -> None:
        self.settings = settings
        self.http = http
        self.replay = replay
        self._jwks: dict[str, tuple[float, KeySet]] = {}
        self._fetched_at: dict[str, float] = {}  # last refresh for an unknown kid, per URL (its rate limit)

    async def _keys(self, iss: str, jku: str | None, kid: str | None = None) -> KeySet:
        """The issuer's keys: configured, or fetched from its allow-listed JWKS URL and cached for
        `JWKS_TTL_S`. A `kid` the cached set does not hold refetches at once (an EHR rotated its key), at most
        once per `JWKS_REFRESH_MIN_S` per URL so that unknown `kid`s cannot make us hammer the EHR."""
        configured = self.settings.jwt_jwks.get(iss)
        url = self.settings.jwt_issuers.get(iss)
        if jku is not None and jku != url:
            raise AuthError("jku not on the allow-list for this issuer")
        if configured is not None:
            return KeySet.import_key_set(configured)  # type: ignore[arg-type]
        if url is None:
            raise AuthError("issuer has no keys")
        now = time.monotonic()
        cached = self._jwks.get(url)
        if cached is not None and cached[0] > now:
            known = kid is None or any(getattr(k, "kid", None) == kid for k in cached[1].keys)
            if known or now - self._fetched_at.get(url, float("-inf")) < JWKS_REFRESH_MIN_S:
                return cached[1]
            self._fetched_at[url] = now  # a refresh for an unknown kid: the next one waits
        try:
            response = await self.http.get(url, timeout=2.0)
            response.raise_for_status()
            keys = KeySet.import_key_set(response.json())
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            raise AuthError(f"JWKS unavailable ({type(exc).__name__})") from exc
        self._jwks[url] = (time.monotonic() + JWKS_TTL_S, keys)
        return keys

    async def verify(self, authorization: str | None, audiences: list[str]) -> dict[str, Any]:
        try:
            return await self._verify(authorization, audiences)
        except AuthError as exc:
            # The label is the reason's fixed head only: a client-chosen value (an `alg`) must never become a
            # metric series; the log line carries it ascii-escaped, so a newline cannot forge a line.
            AUTH_FAILURES.labels(reason=str(exc).split(" (")[0].split(":")[0][:60]).inc()
            log.warning("JWT rejected: %s", ascii(str(exc))[1:-1])
            raise

    async def _verify(self, authorization: str | None, audiences: list[str]) -> dict[str, Any]:
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():  # RFC 6750: the scheme is case-insensitive
            raise AuthError("no bearer token")
        token = token.strip()
        header = _unverified_part(token, 0)
        alg = header.get("alg")
        if alg not in self.settings.jwt_algorithms:
            shown = ascii(str(alg)[:20])[1:-1]  # escaped: a newline in `alg` must not forge a log line
            raise AuthError(f"algorithm not accepted: {shown}")
        iss = _unverified_part(token, 1).get("iss")
        allowed = set(self.settings.jwt_issuers) | set(self.settings.jwt_jwks)
        if not isinstance(iss, str) or iss not in allowed:
            raise AuthError("issuer not on the allow-list")
        jku = header.get("jku")
        kid = header.get("kid")
        keys = await self._keys(iss, jku if isinstance(jku, str) else None, kid if isinstance(kid, str) else None)
        try:
            decoded = jwt.decode(token, keys, algorithms=self.settings.jwt_algorithms)
        except (JoseError, ValueError) as exc:
            raise AuthError(f"signature invalid ({type(exc).__name__})") from exc
        claims: dict[str, Any] = dict(decoded.claims)
        aud = claims.get("aud")
        aud_values = aud if isinstance(aud, list) else [aud]
        if not any(a in audiences for a in aud_values):
            raise AuthError("audience is not this endpoint")
        registry = jwt.JWTClaimsRegistry(
            leeway=self.settings.jwt_leeway_s,
            iss={"essential": True, "value": iss},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise AuthError(f"claims invalid ({type(exc).__name__})") from exc
        if float(claims["iat"]) > time.time() + self.settings.jwt_leeway_s:
            raise AuthError("issued in the future")
        if float(claims["exp"]) - float(claims["iat"]) > self.settings.jwt_max_lifetime_s:
            raise AuthError("token lifetime longer than allowed")
        ttl = int(float(claims["exp"]) - time.time()) + self.settings.jwt_leeway_s
        if not await self.replay.first_use(f"{iss}:{claims['jti']}", ttl):
            raise AuthError("jti replayed")
        return claims
