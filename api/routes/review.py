"""Triage review (jobs created with `review: true`): read the reviewer's overrides, change a triaged pair's
category while the job is `awaiting_review`, then continue the job into scoring / training.

Tenant-scoped like every job route: another tenant's job is a 404. A change outside `awaiting_review` is a 409
(the categories are what training used or will use), an unknown category a 422.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.errors import ProblemError
from api.routes import problems
from api.routes.jobs import enqueue_stage, job_out
from api.schemas import JobOut
from core.db.access.events import add_event
from core.db.access.jobs import get_job, load_job, lock_job, transition_job
from core.db.access.leases import expect_enqueue
from core.db.access.triage import get_triage_item, overridden_triage_items, triage_category_counts
from core.db.models import Job, TriageItem, utcnow
from core.db.states import STAGE_STATE, EventType, JobState, Stage, next_stage
from core.jobspec import RealignRequest
from core.registry import job_folder
from core.review import write_review
from trace_engine.categories import CATEGORIES

router = APIRouter(prefix="/v1", tags=["review"])
# What a reviewer may set, as plain strings so a 422 names them as a client sends them (ERROR: no verdict).
ReviewableCategory = Literal[tuple(str(category) for category in CATEGORIES)]


class CategoryChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: ReviewableCategory = Field(
        description="the category training will use for this pair (INVERT: train on the swapped pair; PUNISH: "
                    "suppress both responses; RETAIN: keep as it is)",
        json_schema_extra={"examples": ["RETAIN"]})


class ReviewedItem(BaseModel):
    """One triaged pair's category after review."""

    pair_id: str = Field(description="the pair's id")
    position: int = Field(description="its row in the dataset (0-based)")
    category: str = Field(description="the category in force (the reviewer's, when overridden)")
    original_category: str | None = Field(description="the judge's category when a reviewer changed it, else None")
    reviewed_at: datetime | None = Field(description="when a reviewer last changed it (UTC); null if never")


class ReviewOut(BaseModel):
    """A job's triage review."""

    object: Literal["review"] = Field(default="review", description="the object's type (OpenAI-style)")
    job_id: str = Field(description="the job reviewed")
    state: str = Field(description="the job's state")
    awaiting_review: bool = Field(description="categories can be changed now")
    overrides: list[ReviewedItem] = Field(description="the pairs whose category a reviewer changed")


def _not_awaiting(job: Job, action: str) -> ProblemError:
    hint = "" if job.request.get("review") else " (submit the job with \"review\": true to review it)"
    return ProblemError(409, f"job {job.id} is {job.state}; {action} only while it is awaiting_review{hint}",
                        slug="job-not-awaiting-review")


def _item_out(item: TriageItem) -> ReviewedItem:
    return ReviewedItem(pair_id=item.pair_id, position=item.position, category=item.category,
                        original_category=item.original_category, reviewed_at=item.reviewed_at)


@router.get("/jobs/{job_id}/review", response_model=ReviewOut, responses=problems(401, 404),
            summary="A job's review: whether it awaits review and the overridden pairs",
            description="Whether the job is `awaiting_review` (created with `review: true` and triaged), and the "
            "pairs whose category a reviewer changed, each with the judge's original category. GET "
            "/v1/jobs/{job_id}/triage lists every pair with its verdicts.")
def get_review(job_id: str, session: SessionDep, principal: PrincipalDep) -> ReviewOut:
    job = get_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    return ReviewOut(job_id=job.id, state=job.state, awaiting_review=job.state == JobState.AWAITING_REVIEW.value,
                     overrides=[_item_out(i) for i in
                                overridden_triage_items(session, tenant_id=job.tenant_id, job_id=job.id)])


@router.patch("/jobs/{job_id}/triage/{pair_id}", response_model=ReviewedItem, responses=problems(401, 404, 409, 422),
              summary="Override a triaged pair's category (job awaiting review)",
              description="Sets the category training will use for one pair; the judge's category is kept as "
              "`original_category` (setting it back clears the override). 409 unless the job is "
              "`awaiting_review`; 422 for an unknown category.")
def change_category(job_id: str, pair_id: str, change: CategoryChange, session: SessionDep,
                    principal: PrincipalDep) -> ReviewedItem:
    """Set the category training will use for one pair; the judge's category is kept as `original_category`
    (setting it back clears the override). 409 unless the job is `awaiting_review`."""
    job = lock_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    item = get_triage_item(session, tenant_id=job.tenant_id, job_id=job.id, pair_id=pair_id)
    if job.state != JobState.AWAITING_REVIEW.value:
        raise _not_awaiting(job, "categories can be changed")
    judge_category = item.original_category or item.category
    if change.category != item.category:
        item.category = change.category
        item.original_category = None if change.category == judge_category else judge_category
        item.reviewed_at = utcnow()
        session.flush()
        job.category_counts = triage_category_counts(session, tenant_id=job.tenant_id, job_id=job.id)
        job.updated_at = utcnow()
        add_event(session, job_id=job.id, type=EventType.REVIEWED, stage=Stage.TRIAGE,
                  data={"pair_id": pair_id, "from": judge_category, "to": change.category})
    session.commit()
    return _item_out(item)


@router.post("/jobs/{job_id}/continue", status_code=202, response_model=JobOut, responses=problems(401, 404, 409),
             summary="Continue a reviewed job: train on the reviewed categories",
             description="Records the overrides (the job's `triage/review.json`, which scoring and training "
             "read), moves the job to its next stage and queues it (202). 409 unless the job is "
             "`awaiting_review`.")
def continue_job(job_id: str, request: Request, session: SessionDep, settings: SettingsDep,
                 principal: PrincipalDep) -> JobOut:
    """Writes the overrides to the job's `triage/review.json` (what scoring and training read), moves the job to
    its next stage and enqueues it. 409 unless the job is `awaiting_review`."""
    job = lock_job(session, tenant_id=principal.tenant_id, job_id=job_id)
    if job.state != JobState.AWAITING_REVIEW.value:
        raise _not_awaiting(job, "it can be continued")
    overrides = {i.pair_id: i.category
                 for i in overridden_triage_items(session, tenant_id=job.tenant_id, job_id=job.id)}
    try:
        following = next_stage(RealignRequest.model_validate(job.request), Stage.TRIAGE) or Stage.TRAIN
    except ValidationError:  # stored by an older version with fields refused since: the worker would fail it
        raise ProblemError(409, f"job {job.id}'s stored request is no longer accepted; submit it again",
                           slug="stored-request-invalid") from None
    write_review(job_folder(settings, job.id), overrides)
    add_event(session, job_id=job.id, type=EventType.REVIEWED, stage=Stage.TRIAGE,
              data={"continued": True, "overrides": len(overrides)})
    transition_job(session, job_id=job.id, to_state=STAGE_STATE[following])
    expect_enqueue(session, job_id=job.id)
    session.commit()
    enqueue_stage(request, session, job.id, following)
    return job_out(session, load_job(session, job_id=job.id))
