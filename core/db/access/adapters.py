"""The adapter registry's rows (the files are under the job's folder: `core.registry`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.db.access.common import Page, newest_first, tenant_owned
from core.db.models import Adapter, new_id


def create_adapter(
    session: Session, *, tenant_id: str, job_id: str | None, name: str, path: str, sha256: str, size_bytes: int,
    provenance: dict[str, Any], eval_report: dict[str, Any] | None = None,
) -> Adapter:
    """Register an adapter; a job registers at most one (a repeated call for the same job returns the first)."""
    if job_id is not None:
        existing = session.scalar(select(Adapter).where(Adapter.job_id == job_id))
        if existing is not None:
            return existing
    adapter = Adapter(id=new_id("ada"), tenant_id=tenant_id, job_id=job_id, name=name, path=path, sha256=sha256,
                      size_bytes=size_bytes, provenance=provenance, eval_report=eval_report)
    session.add(adapter)
    session.flush()
    return adapter


def get_adapter(session: Session, *, tenant_id: str, adapter_id: str) -> Adapter:
    return tenant_owned(session, Adapter, tenant_id=tenant_id, object_id=adapter_id, label="adapter")


def find_adapter(session: Session, *, tenant_id: str, id_or_name: str) -> Adapter | None:
    """The tenant's adapter with this id, else with this name (what a client puts in `model`)."""
    return session.scalar(select(Adapter).where(Adapter.tenant_id == tenant_id,
                                                or_(Adapter.id == id_or_name, Adapter.name == id_or_name))
                          .order_by((Adapter.id == id_or_name).desc()).limit(1))


def adapter_of_job(session: Session, *, tenant_id: str, job_id: str) -> Adapter | None:
    return session.scalar(select(Adapter).where(Adapter.job_id == job_id, Adapter.tenant_id == tenant_id))


def list_adapters(session: Session, *, tenant_id: str, limit: int, cursor: str | None = None) -> Page[Adapter]:
    return newest_first(session, Adapter, tenant_id=tenant_id, limit=limit, cursor=cursor)


def delete_adapter(session: Session, *, tenant_id: str, adapter_id: str) -> Adapter:
    """Remove the row (the caller removes the files after the commit); returns the removed row."""
    adapter = get_adapter(session, tenant_id=tenant_id, adapter_id=adapter_id)
    session.delete(adapter)
    session.flush()
    return adapter


def set_adapter_gate(session: Session, *, adapter_id: str, result: dict[str, Any]) -> None:
    session.execute(update(Adapter).where(Adapter.id == adapter_id).values(deploy_gate=result)
                    .execution_options(synchronize_session=False))


