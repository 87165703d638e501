"""HTTP service (FastAPI): `api.app.create_app(settings, enqueue)`. Never imports torch (a test checks).

Layout: `settings` (REALIGN_* configuration), `db/` (models, state machine, keyword-only data access, Alembic
upgrade), `routes/` (thin HTTP handlers), `schemas` (request/response models), `errors` (RFC 9457 problems),
`auth` (Bearer keys -> tenant), `metrics` (Prometheus), `cli` (`realign keys create`).
"""
