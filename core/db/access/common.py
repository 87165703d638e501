"""What every data-access module shares: not-found and bad-cursor errors, opaque cursors and pages (newest first for
a tenant's own rows), the tenant scoping of a tenant-owned row or of a job's child rows, and the dialect's
INSERT ... ON CONFLICT."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from core.db.models import Adapter, File, Job

T = TypeVar("T")
_Owned = TypeVar("_Owned", File, Job, Adapter)  # tenant-owned records with `id` and `tenant_id`


class NotFound(LookupError):
    """The object does not exist for this tenant."""


class BadCursor(ValueError):
    """A pagination cursor that this service did not hand out."""


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(value: str | int) -> str:
    """Opaque cursor: clients must not build or parse it."""
    raw = f"{'i' if isinstance(value, int) else 's'}:{value}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, kind: type) -> str | int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, value = raw.partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadCursor(f"invalid cursor {cursor!r}") from exc
    if kind is int and tag == "i" and value.lstrip("-").isdigit():
        return int(value)
    if kind is str and tag == "s" and value:
        return value
    raise BadCursor(f"invalid cursor {cursor!r}")


def page_of(rows: Sequence[T], limit: int, key: Any) -> Page[T]:
    items = list(rows[:limit])
    next_cursor = encode_cursor(key(items[-1])) if len(rows) > limit and items else None
    return Page(items, next_cursor)


def of_tenant_jobs(query: Select[Any], job_id: Any, tenant_id: str) -> Select[Any]:
    """`query` narrowed to rows whose `job_id` column names one of the tenant's jobs (rows of a job's children:
    events, triage items, stage progress)."""
    return query.join(Job, Job.id == job_id).where(Job.tenant_id == tenant_id)


def tenant_owned(session: Session, model: type[_Owned], *, tenant_id: str, object_id: str, label: str,
                 for_update: bool = False) -> _Owned:
    """The tenant's object with this id; another tenant's object is indistinguishable from a missing one.
    for_update: row-locked (Postgres) until the transaction ends."""
    query = select(model).where(model.id == object_id, model.tenant_id == tenant_id)
    record = session.scalar(query.with_for_update() if for_update else query)
    if record is None:
        raise NotFound(f"{label} {object_id} not found")
    return record


def newest_first(session: Session, model: type[_Owned], *, tenant_id: str, limit: int, cursor: str | None,
                 where: Sequence[Any] = ()) -> Page[_Owned]:
    """A page of the tenant's rows, newest first (ids sort by creation); the cursor is the last id seen, so pages
    never repeat or skip a row."""
    query = select(model).where(model.tenant_id == tenant_id, *where)
    if cursor:
        query = query.where(model.id < decode_cursor(cursor, kind=str))
    rows = session.scalars(query.order_by(model.id.desc()).limit(limit + 1)).all()
    return page_of(rows, limit, lambda row: row.id)


def dialect_insert(session: Session, model: type) -> Any:
    """The dialect's INSERT (both Postgres and SQLite support ON CONFLICT DO NOTHING and RETURNING)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(model)
