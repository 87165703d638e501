"""Redis and Postgres restarted under a running stage (stopped as an operator would, down for a few seconds, started
again on the same port and data; Redis with `--appendonly yes` as compose runs it). The workers must survive the
outage (or the job must still finish), with nothing lost and repeats bounded by what was in flight."""

from __future__ import annotations

import pytest

from tests.integration.support import Stack
from tests.support.servers import PostgresServer, RedisServer

from .support import FaultRecord, training_fault, triage_fault

pytestmark = pytest.mark.faults
DOWN_S = 3.0  # longer than the lease TTL (3 s): heartbeats fail for a whole lease


def test_redis_restart_while_triaging(fault_stack: Stack, fault_redis: RedisServer, record: FaultRecord) -> None:
    record.fault, record.stage = f"Redis restart ({DOWN_S:g} s down)", "triage"
    triage_fault(fault_stack, record, lambda _: fault_redis.restart(down_s=DOWN_S), latency=0.3)


def test_redis_restart_while_training(fault_stack: Stack, fault_redis: RedisServer, record: FaultRecord) -> None:
    record.fault, record.stage = f"Redis restart ({DOWN_S:g} s down)", "train"
    training_fault(fault_stack, record, lambda _: fault_redis.restart(down_s=DOWN_S))


def test_postgres_restart_while_triaging(fault_stack: Stack, fault_postgres: PostgresServer,
                                         record: FaultRecord) -> None:
    record.fault, record.stage = f"Postgres restart ({DOWN_S:g} s down)", "triage"
    triage_fault(fault_stack, record, lambda _: fault_postgres.restart(down_s=DOWN_S), latency=0.3)
