"""The Celery app for tests/worker/test_broker_loss.py: built by the project's `make_celery` from REALIGN_*
(exactly as `worker.tasks` builds its own: same transport, `acks_late`, reconnect policy), with one test task, so
a worker starts in a second instead of importing the engine."""

from __future__ import annotations

import time
from pathlib import Path

from core.celery_app import make_celery
from core.settings import Settings

app = make_celery(Settings())


@app.task(name="realign.test.hold")
def hold(marker: str, seconds: float) -> str:
    """Touch `<marker>.started`, sleep, touch `<marker>.done` (the test watches the files)."""
    Path(marker + ".started").touch()
    time.sleep(seconds)
    Path(marker + ".done").touch()
    return marker
