"""Audit records that survive a failing database: bounded writes, a durable local spool, replay without
duplicates.

A hung or unreachable database must neither block the EHR's answer nor lose its audit record. So each
record is written with a timeout (`CDS_DB_TIMEOUT_MS`) and, when that fails or the circuit breaker is open
(a failure in the last `BREAKER_S`), appended to `audit-spool.jsonl` in `CDS_DATA_DIR` (one JSON line,
flushed and fsynced before the answer goes out). `replay()` moves spooled records into the database once it
answers again; each record carries its own `record_id`, which the table keeps unique, so a record whose
first attempt did land after all (a write that timed out here but committed there) is stored once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from cds_service.core.telemetry import AUDIT_SPOOLED
from cds_service.storage.db import Store

log = logging.getLogger(__name__)
SPOOL_FILE = "audit-spool.jsonl"
BREAKER_S = 5.0


class AuditWriter:
    def __init__(self, store: Store, data_dir: Path, timeout_s: float) -> None:
        self.store = store
        self.path = data_dir / SPOOL_FILE
        self.timeout_s = timeout_s
        self._down_until = 0.0
        self._lock = threading.Lock()  # the spool file: appends and the replay's swap

    @property
    def database_state(self) -> str:
        return "down" if time.monotonic() < self._down_until else "up"

    def spooled(self) -> int:
        """Records waiting in the spool (including any being replayed)."""
        total = 0
        for path in (self.path, self.path.with_suffix(".replaying")):
            try:
                with path.open("rb") as f:
                    total += sum(1 for line in f if line.strip())
            except FileNotFoundError:
                pass
        return total

    async def write(self, record: dict[str, Any]) -> None:
        """Into the database within the timeout, else into the spool (never raises for a database fault)."""
        if time.monotonic() >= self._down_until:
            try:
                await asyncio.wait_for(run_in_threadpool(self.store.write_audit, **record), self.timeout_s)
                return
            except Exception as exc:  # any database fault: the record goes to the spool instead
                self._down_until = time.monotonic() + BREAKER_S
                log.error("audit database unavailable (%s); spooling audit records locally", type(exc).__name__)
        await run_in_threadpool(self._append, record)
        AUDIT_SPOOLED.inc()

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def replay(self) -> int:
        """Move spooled records into the database; returns how many were replayed. The spool is set aside
        under the lock and written without it, so answers keep spooling while a slow database is tried; a
        record that fails goes back, with those after it and ahead of any spooled meanwhile (order kept)."""
        taking = self.path.with_suffix(".replaying")
        with self._lock:
            if not taking.exists():
                if not self.path.is_file():
                    return 0
                os.replace(self.path, taking)
        lines = [line for line in taking.read_text(encoding="utf-8").splitlines() if line.strip()]
        done = 0
        try:
            for line in lines:
                self.store.write_audit(**json.loads(line))
                done += 1
        except Exception as exc:  # still down: keep the rest for the next attempt
            log.warning("audit spool replay stopped after %d record(s) (%s)", done, type(exc).__name__)
        with self._lock:
            rest = lines[done:]
            if rest:
                newer = self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("".join(f"{line}\n" for line in rest) + newer, encoding="utf-8")
                os.replace(tmp, self.path)
            taking.unlink()
        if done:
            log.info("replayed %d spooled audit record(s) into the database", done)
        if not lines[done:]:
            self._down_until = 0.0
        return done

    async def replay_forever(self, every_s: float = 5.0) -> None:
        """Background task: replay whenever the spool holds records."""
        while True:
            await asyncio.sleep(every_s)
            if self.path.is_file():
                try:
                    await run_in_threadpool(self.replay)
                except Exception as exc:  # never let the replayer die
                    log.warning("audit spool replay failed (%s)", type(exc).__name__)
