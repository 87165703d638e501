"""The adapter registry: list, read, download (the safetensors weights, streamed) and delete, tenant-scoped."""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from api.db import access
from api.db.models import Adapter
from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.errors import ProblemError
from api.registry import remove_adapter_files, weights_file
from api.routes import problems
from api.routes.jobs import bad_cursor, not_found
from api.schemas import AdapterList, AdapterOut

router = APIRouter(prefix="/v1", tags=["adapters"])
log = logging.getLogger("realign.api")


def adapter_out(adapter: Adapter) -> AdapterOut:
    return AdapterOut(id=adapter.id, name=adapter.name, job_id=adapter.job_id, sha256=adapter.sha256,
                      size_bytes=adapter.size_bytes, provenance=adapter.provenance or {},
                      eval_report=adapter.eval_report, deploy_gate=adapter.deploy_gate, created_at=adapter.created_at)


@router.get("/adapters", response_model=AdapterList, responses=problems(400, 401, 422),
            summary="Your registered adapters, newest first")
def list_adapters(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    limit: Annotated[int | None, Query(ge=1, description="page size (server caps it)")] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
) -> AdapterList:
    page_size = min(limit or settings.default_page_size, settings.max_page_size)
    try:
        page = access.list_adapters(session, tenant_id=principal.tenant_id, limit=page_size, cursor=cursor)
    except access.BadCursor as exc:
        raise bad_cursor(exc) from None
    return AdapterList(data=[adapter_out(a) for a in page.items], next_cursor=page.next_cursor)


def _owned(session: SessionDep, tenant_id: str, adapter_id: str) -> Adapter:
    try:
        return access.get_adapter(session, tenant_id=tenant_id, adapter_id=adapter_id)
    except access.NotFound as exc:
        raise not_found(exc) from None


@router.get("/adapters/{adapter_id}", response_model=AdapterOut, responses=problems(401, 404),
            summary="One adapter with its provenance, evaluation and deploy-gate result")
def get_adapter(adapter_id: str, session: SessionDep, principal: PrincipalDep) -> AdapterOut:
    return adapter_out(_owned(session, principal.tenant_id, adapter_id))


@router.get("/adapters/{adapter_id}/download", responses={
    **problems(401, 404, 410), 200: {"description": "adapter_model.safetensors",
                                     "content": {"application/octet-stream": {}}}},
    summary="Download the adapter's weights (safetensors)")
def download_adapter(adapter_id: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> Response:
    adapter = _owned(session, principal.tenant_id, adapter_id)
    path = weights_file(settings, adapter.path)
    if not path.is_file():
        raise ProblemError(410, f"adapter {adapter_id}'s weights are gone from storage", slug="adapter-files-missing")
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"{adapter.name}.safetensors", headers={"X-Content-SHA256": adapter.sha256})


@router.delete("/adapters/{adapter_id}", status_code=204, responses=problems(401, 404),
               summary="Delete an adapter: unloaded from serving, removed from the registry and from storage")
async def delete_adapter(adapter_id: str, request: Request, principal: PrincipalDep) -> Response:
    settings = request.app.state.settings

    def remove() -> str:
        with request.app.state.sessions() as session:
            try:
                adapter = access.delete_adapter(session, tenant_id=principal.tenant_id, adapter_id=adapter_id)
            except access.NotFound as exc:
                raise not_found(exc) from None
            session.commit()
            return adapter.path

    path = await anyio.to_thread.run_sync(remove)
    serving = getattr(request.app.state, "serving", None)
    if serving is not None:
        with contextlib.suppress(Exception):  # the backend may be down; a deleted adapter is never resolved again
            await serving.forget(adapter_id)
    await anyio.to_thread.run_sync(remove_adapter_files, settings, path)
    return Response(status_code=204)
