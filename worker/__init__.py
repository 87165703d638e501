"""Celery workers that run engine stages for queued jobs. Not built yet: issue 5 adds the tasks."""
