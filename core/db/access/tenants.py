"""Tenants, their API keys (only a hash is stored) and their submission quotas."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core.db.models import ApiKey, File, Job, Tenant, new_id
from core.db.states import LIVE_STATES

KEY_PREFIX = "rk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(session: Session, *, tenant_name: str) -> str:
    """A new key for the tenant (created if absent). The plaintext is returned once and never stored."""
    tenant = get_or_create_tenant(session, name=tenant_name)
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(key)))
    session.flush()
    return key


def authenticate(session: Session, *, key: str) -> Tenant | None:
    """The tenant owning this (unrevoked) key, else None. Constant-time hash comparison."""
    if not key.startswith(KEY_PREFIX):
        return None
    prefix = key[len(KEY_PREFIX):].split("_", 1)[0]
    row = session.execute(
        select(ApiKey.key_hash, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    ).first()
    if row is None or not hmac.compare_digest(row[0], hash_key(key)):
        return None
    return row[1]


def lock_tenant_submissions(session: Session, *, tenant_id: str) -> None:
    """Serialise this tenant's submissions until the transaction ends (Postgres advisory lock; SQLite already
    serialises writers), so concurrent requests on several API replicas cannot both pass a quota check."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"realign-quota:{tenant_id}"})


def count_active_jobs(session: Session, *, tenant_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Job)
                              .where(Job.tenant_id == tenant_id, Job.state.in_(LIVE_STATES))) or 0)


def submissions_since(session: Session, *, tenant_id: str, since: datetime) -> tuple[int, datetime | None]:
    """Jobs and files this tenant created at or after `since`: (how many, the oldest one's time)."""
    total, oldest = 0, None
    for model in (Job, File):
        count, first = session.execute(select(func.count(), func.min(model.created_at))
                                       .where(model.tenant_id == tenant_id, model.created_at >= since)).one()
        total += int(count or 0)
        if first is not None:
            first = first if first.tzinfo else first.replace(tzinfo=since.tzinfo)
            oldest = first if oldest is None or first < oldest else oldest
    return total, oldest
