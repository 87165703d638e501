"""A job's triaged pairs, one row per pair (what reviewers page through and the live category counts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.access.common import NotFound, Page, decode_cursor, dialect_insert, of_tenant_jobs, page_of
from core.db.models import TriageItem, utcnow

_INSERT_CHUNK = 500


def add_triage_items(session: Session, *, job_id: str, items: Iterable[Mapping[str, Any]]) -> int:
    """Insert verdict rows {pair_id, position, category, verdicts}; rows already stored are kept as they are
    (a resumed triage stage may offer the same pair twice). Returns how many were new."""
    rows = [{"job_id": job_id, "pair_id": str(i["pair_id"]), "position": int(i["position"]),
             "category": str(i["category"]), "verdicts": dict(i["verdicts"]), "created_at": utcnow()}
            for i in items]
    if not rows:
        return 0
    new = 0
    for start in range(0, len(rows), _INSERT_CHUNK):  # SQLite caps bound parameters per statement
        chunk = rows[start:start + _INSERT_CHUNK]
        statement = dialect_insert(session, TriageItem).values(chunk).on_conflict_do_nothing().returning(TriageItem.pair_id)
        new += len(session.execute(statement).all())
    return new


def list_triage_items(
    session: Session, *, tenant_id: str, job_id: str, limit: int, cursor: str | None = None,
    category: str | None = None,
) -> Page[TriageItem]:
    query = of_tenant_jobs(select(TriageItem).where(TriageItem.job_id == job_id), TriageItem.job_id, tenant_id)
    if category:
        query = query.where(TriageItem.category == category)
    if cursor:
        query = query.where(TriageItem.position > decode_cursor(cursor, kind=int))
    rows = session.scalars(query.order_by(TriageItem.position).limit(limit + 1)).all()
    return page_of(rows, limit, lambda t: t.position)


def get_triage_item(session: Session, *, tenant_id: str, job_id: str, pair_id: str) -> TriageItem:
    """One triaged pair of the tenant's job (NotFound for a missing pair or another tenant's job)."""
    query = of_tenant_jobs(select(TriageItem).where(TriageItem.job_id == job_id, TriageItem.pair_id == pair_id),
                           TriageItem.job_id, tenant_id)
    item = session.scalar(query)
    if item is None:
        raise NotFound(f"job {job_id} has no triaged pair {pair_id!r}")
    return item


def overridden_triage_items(session: Session, *, tenant_id: str, job_id: str) -> list[TriageItem]:
    """The pairs whose category a reviewer changed (they keep the judge's as `original_category`), in order."""
    query = of_tenant_jobs(select(TriageItem).where(TriageItem.job_id == job_id,
                                                    TriageItem.original_category.is_not(None)),
                           TriageItem.job_id, tenant_id)
    return list(session.scalars(query.order_by(TriageItem.position)))


def triage_category_counts(session: Session, *, tenant_id: str, job_id: str) -> dict[str, int]:
    return triage_counts_by_job(session, tenant_id=tenant_id, job_ids=[job_id])[job_id]


def triage_counts_by_job(session: Session, *, tenant_id: str, job_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Live category counts of the stored verdicts, per job of the tenant, in one query."""
    counts: dict[str, dict[str, int]] = {job_id: {} for job_id in job_ids}
    if job_ids:
        query = select(TriageItem.job_id, TriageItem.category, func.count()).where(TriageItem.job_id.in_(list(job_ids)))
        rows = session.execute(of_tenant_jobs(query, TriageItem.job_id, tenant_id)
                               .group_by(TriageItem.job_id, TriageItem.category)).all()
        for job_id, category, count in rows:
            counts[job_id][category] = count
    return counts
