"""Cache of scoring results, keyed by a hash of the job (patient data included) and the model version.

Keys carry no PHI: `cds:score:<sha256>`. Redis when configured (shared by all API replicas and written
by precompute), else a small in-process LRU. Entries expire after `ttl_s`, so a stale record cannot be
served for long; changed data changes the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any

import redis.asyncio as aioredis

from cds_service.ml.contract import ScoringJob, ScoringResult

log = logging.getLogger(__name__)
LOCAL_ENTRIES = 256


def job_key(job: ScoringJob, model_version: str | None) -> str:
    """Everything that determines the result except the cutoff (seconds apart within one visit)."""
    payload = job.to_json()
    payload.pop("cutoff", None)
    payload.pop("deadline_at", None)
    digest = hashlib.sha256(json.dumps([model_version, payload], sort_keys=True, default=str).encode())
    return f"cds:score:{digest.hexdigest()}"


class ScoreCache:
    def __init__(self, redis_url: str | None, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._url = redis_url
        self._redis: aioredis.Redis | None = None
        self._local: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def _client(self) -> aioredis.Redis | None:
        if self._url and self._redis is None:
            self._redis = aioredis.from_url(self._url, socket_timeout=0.2, socket_connect_timeout=0.2)
        return self._redis

    async def get(self, key: str) -> ScoringResult | None:
        client = self._client()
        if client is not None:
            try:
                raw = await client.get(key)
            except (OSError, aioredis.RedisError):
                return None  # a cache that is down is a miss, never an error
            return ScoringResult.from_json(json.loads(raw)) if raw else None
        entry = self._local.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        self._local.move_to_end(key)
        return ScoringResult.from_json(entry[1])

    async def put(self, key: str, result: ScoringResult) -> None:
        client = self._client()
        if client is not None:
            try:
                await client.set(key, json.dumps(result.to_json()), ex=self.ttl_s)
            except (OSError, aioredis.RedisError):
                log.warning("score cache unavailable: result not cached")
            return
        self._local[key] = (time.monotonic() + self.ttl_s, result.to_json())
        self._local.move_to_end(key)
        while len(self._local) > LOCAL_ENTRIES:
            self._local.popitem(last=False)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
