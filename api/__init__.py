"""HTTP service (FastAPI): `api.app.create_app(settings, enqueue)`. Never imports torch (a test checks), nor
`worker`: what it shares with the workers (settings, database, job specs, queues) is in `core`.

Layout: `routes/` (thin HTTP handlers), `schemas` (response models), `errors` (RFC 9457 problems), `auth` (Bearer
keys -> tenant), `metrics` (Prometheus), `gateway/` and `serving` (the OpenAI-compatible gateway), `cli`
(`realign keys create`), `embedded` (`realign serve`).
"""
