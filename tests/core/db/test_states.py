"""The job state machine's table (pure)."""

from __future__ import annotations

import pytest

from core.db.states import (
    ALLOWED_TRANSITIONS,
    RUNNING_STATES,
    TERMINAL_STATES,
    InvalidTransition,
    JobState,
    check_transition,
)


def test_terminal_states_have_no_exits_and_live_states_can_fail() -> None:
    for state in JobState:
        targets = ALLOWED_TRANSITIONS[state]
        if state in TERMINAL_STATES:
            assert targets == frozenset()
        else:
            assert JobState.FAILED in targets


def test_running_states_only_move_forward_and_cancel_goes_through_cancelling() -> None:
    for index, state in enumerate(RUNNING_STATES):
        for earlier in RUNNING_STATES[:index]:
            assert earlier not in ALLOWED_TRANSITIONS[state]
        assert JobState.CANCELLING in ALLOWED_TRANSITIONS[state]
        assert JobState.CANCELLED not in ALLOWED_TRANSITIONS[state]
    assert ALLOWED_TRANSITIONS[JobState.QUEUED] == {JobState.VALIDATING, JobState.CANCELLED, JobState.FAILED}
    assert ALLOWED_TRANSITIONS[JobState.CANCELLING] == {JobState.CANCELLED, JobState.FAILED}
    assert JobState.SUCCEEDED in ALLOWED_TRANSITIONS[JobState.TRAINING]  # no eval suites requested
    assert JobState.SUCCEEDED not in ALLOWED_TRANSITIONS[JobState.TRIAGING]


def test_check_transition_names_both_states() -> None:
    check_transition("job_1", JobState.TRIAGING, JobState.TRAINING)  # skipping scoring is allowed (e.g. dpo)
    with pytest.raises(InvalidTransition, match="succeeded to training"):
        check_transition("job_1", JobState.SUCCEEDED, JobState.TRAINING)
