"""TODO docstring (cds_service.workers.protocol)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


HEARTBEAT_PREFIX = "cds:workers:"  # + queue name: a sorted set of worker -> last heartbeat (epoch s)


HEARTBEAT_EVERY_S = 1.0


SCORE_TASK = "cds.score"


REPLY_TTL_S = 60


def heartbeat_key(queue: str) -> str:
    return HEARTBEAT_PREFIX + queue
