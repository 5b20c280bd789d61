"""What the API and the workers agree on over Redis: task name, key names and lifetimes, reply payloads.

One module so that the client (`workers.client`) and the task (`workers.tasks`) can never disagree.
A reply is one JSON object on a per-request list: a `ScoringResult`, or `{"deadline_missed": why}`, or
`{"worker_error": exception type}` (no message: it may quote patient data).
"""

from __future__ import annotations

import uuid

HEARTBEAT_PREFIX = "cds:workers:"  # + queue name: a sorted set of worker -> last heartbeat (epoch s)
HEARTBEAT_EVERY_S = 1.0
WORKER_STALE_S = 3.0  # the API treats a worker silent this long as gone
SCORE_TASK = "cds.score"
REPLY_TTL_S = 60
JOB_PREFIX = "cds:job:"
REPLY_PREFIX = "cds:reply:"
DEADLINE_MISSED = "deadline_missed"
WORKER_ERROR = "worker_error"


def heartbeat_key(queue: str) -> str:
    return HEARTBEAT_PREFIX + queue


def new_job_key() -> str:
    return f"{JOB_PREFIX}{uuid.uuid4().hex}"


def new_reply_key() -> str:
    return f"{REPLY_PREFIX}{uuid.uuid4().hex}"


def job_key_ttl_s(expires_s: float) -> int:
    """The job's Redis key outlives its message's expiry by a little, never less than 5 s."""
    return max(int(expires_s) + 5, 5)
