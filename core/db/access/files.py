"""Uploaded dataset files (the bytes are on disk under `files_dir`; rows here record them per tenant)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.db.access.common import Page, newest_first, tenant_owned
from core.db.models import File


def create_file(
    session: Session, *, file_id: str, tenant_id: str, filename: str, fmt: str, size_bytes: int, sha256: str,
    rows: int, pairs: int, report: dict[str, Any],
) -> File:
    record = File(id=file_id, tenant_id=tenant_id, filename=filename, format=fmt, size_bytes=size_bytes,
                  sha256=sha256, rows=rows, pairs=pairs, report=report)
    session.add(record)
    session.flush()
    return record


def get_file(session: Session, *, tenant_id: str, file_id: str) -> File:
    return tenant_owned(session, File, tenant_id=tenant_id, object_id=file_id, label="file")


def list_files(session: Session, *, tenant_id: str, limit: int, cursor: str | None = None) -> Page[File]:
    return newest_first(session, File, tenant_id=tenant_id, limit=limit, cursor=cursor)
