"""Job states, stages, the one table of allowed transitions (design.md §7), and which stages a request runs.
Pure: no database here."""

from __future__ import annotations

from enum import Enum

from core.jobspec import EvalRequest, RealignRequest
from trace_engine.variants import get_variant


class JobState(str, Enum):
    QUEUED = "queued"
    VALIDATING = "validating"
    TRIAGING = "triaging"
    SCORING = "scoring"
    TRAINING = "training"
    EVALUATING = "evaluating"
    AWAITING_REVIEW = "awaiting_review"  # triage done, a reviewer checks categories (request `review: true`)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


class Stage(str, Enum):
    """A unit of queued work; a Celery message carries only (job id, stage)."""

    VALIDATE = "validate"
    TRIAGE = "triage"
    SCORE = "score"
    TRAIN = "train"
    EVALUATE = "evaluate"


STAGE_ORDER: tuple[Stage, ...] = (Stage.VALIDATE, Stage.TRIAGE, Stage.SCORE, Stage.TRAIN, Stage.EVALUATE)
STAGE_STATE: dict[Stage, JobState] = {
    Stage.VALIDATE: JobState.VALIDATING,
    Stage.TRIAGE: JobState.TRIAGING,
    Stage.SCORE: JobState.SCORING,
    Stage.TRAIN: JobState.TRAINING,
    Stage.EVALUATE: JobState.EVALUATING,
}
STATE_STAGE: dict[JobState, Stage] = {state: stage for stage, state in STAGE_STATE.items()}
RUNNING_STATES: tuple[JobState, ...] = tuple(STAGE_STATE[s] for s in STAGE_ORDER)
TERMINAL_STATES: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# Live but parked: no stage runs and nothing is queued until a person acts (POST /v1/jobs/{id}/continue), so the
# reaper leaves such a job alone and a cancel ends it at once.
PARKED_STATES: frozenset[JobState] = frozenset({JobState.AWAITING_REVIEW})


def _allowed() -> dict[JobState, frozenset[JobState]]:
    """Forward only: a running stage may hand over to any later stage (variants skip stages, e.g. `dpo` has no
    triage), the last stages may succeed, anything live may fail, and cancel goes through `cancelling` unless
    no worker holds the job (queued, awaiting review). A reviewed job parks in `awaiting_review` after triage and
    goes on to any later stage."""
    table: dict[JobState, set[JobState]] = {
        JobState.QUEUED: {JobState.VALIDATING, JobState.CANCELLED, JobState.FAILED},
        JobState.CANCELLING: {JobState.CANCELLED, JobState.FAILED},
        JobState.AWAITING_REVIEW: set(RUNNING_STATES[RUNNING_STATES.index(JobState.TRIAGING) + 1:])
        | {JobState.CANCELLED, JobState.FAILED},
    }
    for index, state in enumerate(RUNNING_STATES):
        later = set(RUNNING_STATES[index + 1:])
        table[state] = later | {JobState.FAILED, JobState.CANCELLING}
        if state in (JobState.TRAINING, JobState.EVALUATING):
            table[state].add(JobState.SUCCEEDED)
    table[JobState.TRIAGING].add(JobState.AWAITING_REVIEW)
    for state in TERMINAL_STATES:
        table[state] = set()
    return {state: frozenset(targets) for state, targets in table.items()}


ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = _allowed()
# Only a retry (POST /v1/jobs/{id}/retry) leaves a terminal state: a failed job goes back to the running state of
# the stage it failed in (completed stages keep what they produced).
RETRY_TRANSITIONS: dict[JobState, frozenset[JobState]] = {JobState.FAILED: frozenset(RUNNING_STATES)}


class InvalidTransition(ValueError):
    """A state change the machine does not allow (e.g. succeeded -> training)."""

    def __init__(self, job_id: str, current: JobState, target: JobState):
        self.job_id, self.current, self.target = job_id, current, target
        super().__init__(f"job {job_id}: cannot go from {current.value} to {target.value}")


def check_transition(job_id: str, current: JobState, target: JobState, *, retry: bool = False) -> None:
    """Raise `InvalidTransition` unless `current -> target` is allowed (with `retry`: also a retry's move)."""
    allowed = ALLOWED_TRANSITIONS[current] | (RETRY_TRANSITIONS.get(current, frozenset()) if retry else frozenset())
    if target not in allowed:
        raise InvalidTransition(job_id, current, target)


def is_terminal(state: JobState | str) -> bool:
    return JobState(state) in TERMINAL_STATES


LIVE_STATES = tuple(s.value for s in JobState if not is_terminal(s))
REQUEUE_STATES = tuple(s for s in LIVE_STATES if JobState(s) not in PARKED_STATES)  # what the reaper may re-send


class EventType(str, Enum):
    """Typed job events (GET /v1/jobs/{id}/events)."""

    STATE_CHANGED = "state_changed"
    STAGE_STARTED = "stage_started"
    PROGRESS = "progress"
    STAGE_COMPLETED = "stage_completed"
    WARNING = "warning"
    ERROR = "error"
    CANCEL_REQUESTED = "cancel_requested"
    RETRIED = "retried"
    ARTIFACT = "artifact"
    REVIEWED = "reviewed"  # a reviewer changed a triaged pair's category (or continued the job)


# ---------------------------------------------------------------- which stages a request runs


def needs_triage(request: RealignRequest) -> bool:
    return get_variant(request.method.variant).needs_triage


def needs_scoring(request: RealignRequest) -> bool:
    return get_variant(request.method.variant).needs_scores


def next_stage(request: RealignRequest | EvalRequest, finished: Stage) -> Stage | None:
    """The stage after `finished` for this request (variants skip stages); None = the job is done."""
    if isinstance(request, EvalRequest):
        return Stage.EVALUATE if finished == Stage.VALIDATE else None
    wanted = [Stage.VALIDATE]
    if needs_triage(request):
        wanted.append(Stage.TRIAGE)
    if needs_scoring(request):
        wanted.append(Stage.SCORE)
    wanted.append(Stage.TRAIN)
    if request.eval.suites:
        wanted.append(Stage.EVALUATE)
    index = wanted.index(finished) if finished in wanted else -1
    return wanted[index + 1] if 0 <= index < len(wanted) - 1 else None
