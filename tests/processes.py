"""Private PostgreSQL and Redis servers for fault tests and the fault benchmark: started, paused with
SIGSTOP (a hung server: it accepts nothing and answers nothing) and stopped by the caller, never the
machine's shared instances."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine

from tests.servers import free_port


def family(pid: int) -> list[int]:
    """The server and its child processes (PostgreSQL's backends each run in their own session)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:  # the parent pid
                children.append(int(entry.name))
    return [pid, *children]


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP the server and its workers (a hung server: it accepts nothing and answers nothing), SIGCONT on
    the way out, whatever happens."""
    stopped = family(pid)
    for member in stopped:
        os.kill(member, signal.SIGSTOP)
    try:
        yield
    finally:
        for member in stopped:
            os.kill(member, signal.SIGCONT)


def server_binary(name: str) -> str:
    """A PostgreSQL or Redis server binary, also where CI's bare environment (`env -i`) has no PATH to it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/bin:/usr/bin:/usr/lib/postgresql/15/bin")
    if found is None:
        for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
            return str(candidate)
        raise FileNotFoundError(f"{name}: install PostgreSQL and Redis (the fault tests start their own)")
    return found


@contextmanager
def postgres() -> Iterator[tuple[str, int]]:  # (URL, pid to pause)
    """A private PostgreSQL cluster (as the `postgres` user, which the server requires), trust auth; its
    directory outside pytest's (root-only) tmp so that user can reach it."""
    data = Path(tempfile.mkdtemp(prefix="cds-pg-"))
    shutil.chown(data, "postgres", "postgres")
    # Run as that user directly (`user=`): `runuser` stops itself when its child is stopped, and stays stopped.
    initdb = [server_binary("initdb"), "-A", "trust", "-U", "postgres", "-D", str(data)]
    subprocess.run(initdb, check=True, capture_output=True, user="postgres", cwd=data)
    port = free_port()
    server = subprocess.Popen(
        [server_binary("postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        user="postgres",
        cwd=data,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    for _ in range(100):
        try:
            with engine.connect():
                break
        except Exception:
            time.sleep(0.1)
    engine.dispose()
    postmaster = server.pid
    try:
        yield url, postmaster
    finally:
        for member in family(postmaster):
            os.kill(member, signal.SIGCONT)
        subprocess.run(
            [server_binary("pg_ctl"), "-D", str(data), "stop", "-m", "immediate"], capture_output=True, user="postgres"
        )
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def redis() -> Iterator[tuple[str, int]]:  # (URL, pid to pause)
    port = free_port()
    server = subprocess.Popen(
        [server_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.3)
    try:
        yield f"redis://127.0.0.1:{port}/0", server.pid
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.kill()
        server.wait(timeout=10)
