"""The gateway wired to the adapter registry: `model` names one of the caller's adapters (id or name) or the
base model; an adapter passes the deploy gate (weights hash = registry, its teacher-forced log-probs differ from
the base model's on generic and job probe prompts: api/gateway/deploy_gate.py) before it is first served. Gate
results are cached in the registry row (per weights hash) and in memory; a passed adapter's file hash is still
re-checked once per process before it is trusted.

Isolation (`serving_isolation`, issue 17): by default the base model is served through a zero adapter written
under `<data_dir>/serving/` from the base model's config.json, and the backend runs its isolation self-test before
the first generation (api/gateway/backend.py); its state is in `/readyz` under `serving`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, require_principal
from api.gateway.backend import GatewayError, ServingBackend
from api.gateway.deploy_gate import DEFAULT_PROBES, Probe, check_weights_hash, run_deploy_gate
from api.gateway.deploy_gate import METHODS as GATE_METHODS
from api.gateway.router import BASE_MODEL, BaseModelTarget, make_gateway_router
from core.db.access.adapters import find_adapter, list_adapters, set_adapter_gate
from core.db.engine import session_scope
from core.jobspec import SYNTHETIC_BASE_NAMES
from core.null_adapter import IsolationUnavailable, isolation_adapters
from core.registry import AdapterRef, job_probe_prompts, local_adapter_dir, serving_adapter_dir
from core.settings import Settings

log = logging.getLogger("realign.gateway")
LIST_LIMIT = 500


def probe_prompts(provenance: dict[str, Any], settings: Settings | None = None) -> list[Probe]:
    """The generic probes, plus held-out prompts of the synthetic world the adapter was trained in (a tiny
    synthetic model answers generic English poorly; its own world's prompts show the adapter's effect), plus (with
    `settings`) up to `deploy_gate_job_probes` prompts of the adapter's own job: its INVERT/PUNISH pairs and its
    held-out eval prompts (core/registry.py `job_probe_prompts`), where the policy change should show."""
    probes: list[Probe] = list(DEFAULT_PROBES)
    reference = (provenance.get("dataset") or {}).get("reference") or {}
    if reference.get("type") == "synthetic":
        from trace_engine.synthetic.world import make_world

        probes += [t.prompt for t in make_world(int(reference.get("seed", 0))).test_prompts(6)]
    job_id = provenance.get("job_id")
    if settings is not None and isinstance(job_id, str):
        try:
            own = job_probe_prompts(settings, job_id, settings.deploy_gate_job_probes)
        except ValueError:  # not a job id: no files to read
            own = []
        probes += [p for p in own if p not in probes]
    return probes


class RegistryGateway:
    """`resolve_model` / `list_models` for `make_gateway_router`, over the registry and one serving backend."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], backend: ServingBackend) -> None:
        self.settings, self.sessions, self.backend = settings, sessions, backend
        self._passed: dict[str, str] = {}  # adapter id -> weights sha256 that passed in this process
        self._locks: dict[str, asyncio.Lock] = {}

    def base_names(self) -> set[str]:
        names = {self.settings.serving_base_model}
        if self.settings.serving_base_model in SYNTHETIC_BASE_NAMES:
            names.update(SYNTHETIC_BASE_NAMES)
        return names

    def _lookup(self, tenant_id: str, model: str) -> dict[str, Any] | None:
        with self.sessions() as session:
            adapter = find_adapter(session, tenant_id=tenant_id, id_or_name=model)
            if adapter is None:
                return None
            return {"id": adapter.id, "name": adapter.name, "path": adapter.path, "sha256": adapter.sha256,
                    "provenance": dict(adapter.provenance or {}), "deploy_gate": adapter.deploy_gate}

    def _store_gate(self, adapter_id: str, result: dict[str, Any]) -> None:
        with session_scope(self.sessions) as session:
            set_adapter_gate(session, adapter_id=adapter_id, result=result)

    async def resolve_model(self, principal: Principal, model: str) -> AdapterRef | BaseModelTarget | None:
        if model in self.base_names():
            return BASE_MODEL
        record = await run_in_threadpool(self._lookup, principal.tenant_id, model)
        if record is None:
            return BASE_MODEL if model == await self.backend.base_model() else None
        ref = AdapterRef(record["id"], serving_adapter_dir(self.settings, record["path"]))
        await self._gate(record, ref)
        return ref

    async def _gate(self, record: dict[str, Any], ref: AdapterRef) -> None:
        adapter_id, sha = record["id"], record["sha256"]
        if self._passed.get(adapter_id) == sha:
            return
        async with self._locks.setdefault(adapter_id, asyncio.Lock()):
            if self._passed.get(adapter_id) == sha:
                return
            folder = local_adapter_dir(self.settings, record["path"])
            cached = record.get("deploy_gate") or {}
            if cached.get("sha256") == sha and cached.get("passed"):
                check = await run_in_threadpool(check_weights_hash, folder, sha)  # the file may have changed since
                if check.passed:
                    self._passed[adapter_id] = sha
                    return
                result = {"adapter": adapter_id, "passed": False, "reason": check.detail, "checks": [
                    {"name": check.name, "passed": False, "detail": check.detail, **check.data}]}
            elif cached.get("sha256") == sha and _output_check_failed(cached):
                result = cached  # an adapter that does not change outputs will not start to: no re-probe
            else:
                probes = await run_in_threadpool(probe_prompts, record["provenance"], self.settings)
                gate = await run_deploy_gate(self.backend, ref, folder, sha, probes,
                                             max_tokens=self.settings.deploy_gate_max_tokens,
                                             min_delta=self.settings.deploy_gate_min_logprob_delta)
                result = {**gate.to_dict(), "sha256": sha}
            await run_in_threadpool(self._store_gate, adapter_id, result)
            if not result.get("passed"):
                log.warning("adapter %s refused by the deploy gate: %s", adapter_id, result.get("reason"))
                raise GatewayError(422, f"adapter {record['name']} ({adapter_id}) failed the deploy gate and is not "
                                        f"served: {result.get('reason')}", param="model", code="deploy_gate_failed")
            self._passed[adapter_id] = sha

    async def list_models(self, principal: Principal) -> list[str]:
        def names() -> list[str]:
            with self.sessions() as session:
                page = list_adapters(session, tenant_id=principal.tenant_id, limit=LIST_LIMIT)
                return [a.name for a in page.items]

        return [self.settings.serving_base_model, *await run_in_threadpool(names)]

    async def forget(self, adapter_id: str) -> None:
        """A deleted adapter: never trusted again by this process, unloaded from the backend."""
        self._passed.pop(adapter_id, None)
        await self.backend.unload_adapter(adapter_id)


def _output_check_failed(result: dict[str, Any]) -> bool:
    """A stored refusal by this gate's measurement (an older gate's text-only verdict is measured again)."""
    return any(c.get("name") == "changes_outputs" and not c.get("passed") and c.get("method") in GATE_METHODS
               for c in result.get("checks", []))


def make_backend(settings: Settings, url: str) -> ServingBackend:
    """The backend client with the isolation the settings ask for (issue 17; api/gateway/backend.py)."""
    if settings.serving_isolation == "off":
        return ServingBackend(url, max_loaded_adapters=settings.serving_max_adapters)
    try:
        base, probes = isolation_adapters(settings)
    except (IsolationUnavailable, OSError) as exc:
        reason = f"base-model isolation is unavailable: {exc}"
        log.error("%s; the gateway answers 503 to generation requests", reason)
        return ServingBackend(url, max_loaded_adapters=settings.serving_max_adapters, unavailable=reason)
    return ServingBackend(url, max_loaded_adapters=settings.serving_max_adapters, base_adapter=base,
                          selftest_adapters=probes)


def make_serving(settings: Settings, sessions: sessionmaker[Session]) -> tuple[RegistryGateway, APIRouter] | None:
    """The registry gateway and its routes when a serving backend is configured, else None."""
    url = settings.serving_api_url
    if not url:
        return None
    backend = make_backend(settings, url)
    gateway = RegistryGateway(settings, sessions, backend)
    router = make_gateway_router(gateway.resolve_model, backend, require_principal, list_models=gateway.list_models)
    return gateway, router


__all__ = ["RegistryGateway", "make_backend", "make_serving", "probe_prompts"]
