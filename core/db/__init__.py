"""The service's system of record: SQLAlchemy 2 models, the job state machine, and keyword-only data access."""
