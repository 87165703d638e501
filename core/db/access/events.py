"""A job's typed event log (GET /v1/jobs/{id}/events and its SSE stream)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.access.common import Page, decode_cursor, of_tenant_jobs, page_of
from core.db.models import JobEvent
from core.db.states import EventType, Stage


def add_event(
    session: Session, *, job_id: str, type: EventType, data: Mapping[str, Any] | None = None,
    stage: Stage | None = None,
) -> JobEvent:
    event = JobEvent(job_id=job_id, type=type.value, stage=stage.value if stage else None, data=dict(data or {}))
    session.add(event)
    session.flush()
    return event


def list_events(session: Session, *, tenant_id: str, job_id: str, limit: int,
                after_id: int | None = None) -> list[JobEvent]:
    """The tenant's job's events in order, strictly after `after_id` (an event id, e.g. SSE Last-Event-ID); none
    for another tenant's job."""
    query = of_tenant_jobs(select(JobEvent).where(JobEvent.job_id == job_id), JobEvent.job_id, tenant_id)
    if after_id is not None:
        query = query.where(JobEvent.id > after_id)
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit)))


def page_events(session: Session, *, tenant_id: str, job_id: str, limit: int,
                cursor: str | None = None) -> Page[JobEvent]:
    after = decode_cursor(cursor, kind=int) if cursor else None
    rows = list_events(session, tenant_id=tenant_id, job_id=job_id, limit=limit + 1,
                       after_id=after)  # type: ignore[arg-type]
    return page_of(rows, limit, lambda e: e.id)
