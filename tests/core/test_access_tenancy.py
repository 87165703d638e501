"""Every data-access read of a job's child rows (events, triage items, stage progress, its adapter) is scoped by
tenant: another tenant gets nothing, even with the right job id (no route check needed first), and a lookup of
one row of it is NotFound, as for a missing row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.db.access.adapters import adapter_of_job, create_adapter
from core.db.access.common import NotFound
from core.db.access.events import list_events, page_events
from core.db.access.jobs import create_job, lock_job
from core.db.access.stages import stage_progress_by_job, start_stage
from core.db.access.tenants import get_or_create_tenant
from core.db.access.triage import (
    add_triage_items,
    get_triage_item,
    list_triage_items,
    overridden_triage_items,
    triage_category_counts,
    triage_counts_by_job,
)
from core.db.engine import make_engine, make_session_factory, session_scope, upgrade_head
from core.db.states import Stage


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'realign.db'}")
    upgrade_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def owned(sessions: sessionmaker[Session]) -> tuple[str, str, str]:
    """(owner tenant id, other tenant id, job id): a job of the owner with an event, a triage item, stage progress
    and an adapter."""
    with session_scope(sessions) as session:
        owner, other = (get_or_create_tenant(session, name=name).id for name in ("owner", "other"))
        job, _ = create_job(session, tenant_id=owner, request={}, body_hash="h")
        start_stage(session, job_id=job.id, stage=Stage.VALIDATE)
        add_triage_items(session, job_id=job.id, items=[{"pair_id": "p1", "position": 0, "category": "INVERT",
                                                         "verdicts": {}}])
        create_adapter(session, tenant_id=owner, job_id=job.id, name="a", path=f"jobs/{job.id}/train/adapter",
                       sha256="0" * 64, size_bytes=1, provenance={})
        return owner, other, job.id


def test_the_owner_reads_its_jobs_rows(sessions: sessionmaker[Session], owned: tuple[str, str, str]) -> None:
    owner, _, job_id = owned
    with sessions() as session:
        assert list_events(session, tenant_id=owner, job_id=job_id, limit=10)
        assert page_events(session, tenant_id=owner, job_id=job_id, limit=10).items
        assert [i.pair_id for i in list_triage_items(session, tenant_id=owner, job_id=job_id, limit=10).items] == ["p1"]
        assert triage_category_counts(session, tenant_id=owner, job_id=job_id) == {"INVERT": 1}
        assert triage_counts_by_job(session, tenant_id=owner, job_ids=[job_id]) == {job_id: {"INVERT": 1}}
        assert [p.stage for p in stage_progress_by_job(session, tenant_id=owner, job_ids=[job_id])[job_id]] == [
            "validate"]
        assert adapter_of_job(session, tenant_id=owner, job_id=job_id) is not None


def test_another_tenant_gets_nothing_with_the_right_job_id(sessions: sessionmaker[Session],
                                                             owned: tuple[str, str, str]) -> None:
    _, other, job_id = owned
    with sessions() as session:
        assert list_events(session, tenant_id=other, job_id=job_id, limit=10) == []
        assert page_events(session, tenant_id=other, job_id=job_id, limit=10).items == []
        assert list_triage_items(session, tenant_id=other, job_id=job_id, limit=10).items == []
        assert triage_category_counts(session, tenant_id=other, job_id=job_id) == {}
        assert triage_counts_by_job(session, tenant_id=other, job_ids=[job_id]) == {job_id: {}}
        assert stage_progress_by_job(session, tenant_id=other, job_ids=[job_id]) == {job_id: []}
        assert adapter_of_job(session, tenant_id=other, job_id=job_id) is None


def test_review_reads_are_scoped_too(sessions: sessionmaker[Session], owned: tuple[str, str, str]) -> None:
    owner, other, job_id = owned
    with sessions() as session:
        item = get_triage_item(session, tenant_id=owner, job_id=job_id, pair_id="p1")
        item.original_category, item.category = "INVERT", "RETAIN"
        session.flush()
        assert [i.pair_id for i in overridden_triage_items(session, tenant_id=owner, job_id=job_id)] == ["p1"]
        assert overridden_triage_items(session, tenant_id=other, job_id=job_id) == []
        assert lock_job(session, tenant_id=owner, job_id=job_id).id == job_id
        for read in (lambda: get_triage_item(session, tenant_id=other, job_id=job_id, pair_id="p1"),
                     lambda: get_triage_item(session, tenant_id=owner, job_id=job_id, pair_id="nope"),
                     lambda: lock_job(session, tenant_id=other, job_id=job_id)):
            with pytest.raises(NotFound):
                read()
