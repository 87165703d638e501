"""Worker heartbeats (what `/readyz` counts per queue) and the database ping."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.db.access.common import dialect_insert
from core.db.models import WorkerHeartbeat, utcnow


def record_worker(session: Session, *, name: str, hostname: str, pid: int, queues: Sequence[str]) -> None:
    """Upsert this worker's heartbeat row."""
    now = utcnow()
    statement = dialect_insert(session, WorkerHeartbeat).values(name=name, hostname=hostname, pid=pid, queues=list(queues),
                                                         started_at=now, last_seen=now)
    session.execute(statement.on_conflict_do_update(index_elements=["name"],
                                                    set_={"last_seen": now, "queues": list(queues)}))


def remove_worker(session: Session, *, name: str) -> None:
    session.execute(WorkerHeartbeat.__table__.delete().where(WorkerHeartbeat.name == name))


def live_workers_by_queue(session: Session, *, queues: Sequence[str], stale_after_s: float) -> dict[str, int]:
    """How many workers seen within `stale_after_s` consume each of `queues`."""
    now = utcnow()
    counts = {queue: 0 for queue in queues}
    for worker_queues in session.scalars(select(WorkerHeartbeat.queues)
                                         .where(WorkerHeartbeat.last_seen >= now - timedelta(seconds=stale_after_s))):
        for queue in worker_queues or []:
            if queue in counts:
                counts[queue] += 1
    return counts


def ping(session: Session) -> None:
    """Raises if the database is unreachable."""
    session.execute(text("SELECT 1"))
