"""Every read and write of the service's tables, as keyword-only functions over a caller-owned `Session`, one
module per subject: `tenants` (and keys, quotas), `files`, `jobs` (and state changes), `stages` (progress),
`events`, `triage`, `leases` (stage ownership, the reaper's re-queues), `workers`, `adapters`; `common` holds the
errors, cursors and pages they share.

The caller owns the transaction (commit/rollback); functions here only flush. Every read of a tenant's data takes
a `tenant_id`: another tenant's object is simply not found (or, for lists, empty). Unscoped: the worker's
`load_job` and the stage, lease and result bookkeeping (for a job the worker already holds), the reaper's scans,
worker heartbeats, and the operator's job counts per state (`/metrics`).
"""
