"""The service core that `api/` (HTTP) and `worker/` (Celery tasks) share: settings, the database (models, states,
keyword-only data access), the job folder and adapter layout (`registry`), the job-spec request models (`jobspec`),
the queues and the enqueuer (`celery_app`), error sanitising, and the adapters written for base-model isolation.

Imports neither `api` nor `worker`, and never torch.
"""
