"""The Redis broker transport the service uses: kombu's, with one defect fixed so a worker survives a broker restart.

kombu 5.7 / celery 5.7: when the broker drops while a task with `acks_late` runs (its message is unacked), the
consumer first `collect()`s the connection (which detaches the transport: `transport.client = None`) and then
`close()`s it again. The second close closes the default channel a second time, and the channel tries to restore
the unacked message through a fresh Redis pool built from `connection.client.hostname`: an `AttributeError` on
`None`, which is not a connection error, so Celery reports "Unrecoverable error ... 'hostname'" and the worker
exits. The same `AttributeError` hits the running task's late ack after the consumer reconnected (the message
belongs to the old, detached channel) and stops the worker again.

Here a channel whose connection was detached raises a Redis `ConnectionError` instead: the close path ignores it
(as it ignores any connection error), the stale ack is logged as "Couldn't ack" and dropped. Nothing is lost: the
system of record is Postgres, the stage kept its lease and finished; an unacked message that Redis still holds is
re-delivered after the visibility timeout and skipped by the runner (its job has moved on).

Selected by `broker_transport` in `core.celery_app.make_celery` for `redis://` brokers.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class RedisChannel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # detached by Connection.collect(): this channel is dead
            raise RedisConnectionError("broker connection of this channel was closed")
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel
