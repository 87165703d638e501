"""Celery workers that run engine stages for queued jobs (`worker.tasks`). Imports `core` and `trace_engine`,
never `api`."""
