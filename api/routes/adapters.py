"""The adapter registry: list, read, download and delete, tenant-scoped.

Download gives the adapter's directory as a tar.gz (`<name>/adapter_config.json` + `<name>/adapter_model.safetensors`,
streamed): extracted, `peft.PeftModel.from_pretrained(base, "<name>")` and `vllm serve --lora-modules
<name>=<name>` load it as is. `?format=safetensors` gives the weights file alone (the bytes `sha256` is of).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from api.archive import ArchiveError, tar_gz_stream
from api.deps import PaginationDep, PrincipalDep, SessionDep, SettingsDep
from api.errors import ProblemError
from api.routes import problems
from api.schemas import AdapterBaseModelOut, AdapterOut, LoraOut, Page
from core.db.access import adapters as adapter_access
from core.db.models import Adapter
from core.registry import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    archive_folder_name,
    portable_adapter_config,
    read_adapter_config,
    remove_adapter_files,
    weights_file,
)
from core.settings import Settings

router = APIRouter(prefix="/v1", tags=["adapters"])
log = logging.getLogger("realign.api")


def base_model_of(adapter: Adapter) -> dict[str, Any]:
    base = (adapter.provenance or {}).get("base_model")
    return base if isinstance(base, dict) else {}


def lora_out(config: dict[str, Any] | None) -> LoraOut | None:
    if config is None:
        return None

    def number(key: str) -> Any:
        value = config.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    targets = config.get("target_modules")
    if isinstance(targets, list):
        targets = [str(t) for t in targets]
    elif not isinstance(targets, str):
        targets = None
    rank = number("r")
    return LoraOut(r=int(rank) if rank is not None else None, alpha=number("lora_alpha"),
                   dropout=number("lora_dropout"), target_modules=targets,
                   peft_type=str(config["peft_type"]) if config.get("peft_type") else None)


def adapter_out(adapter: Adapter, settings: Settings) -> AdapterOut:
    base = base_model_of(adapter)
    return AdapterOut(id=adapter.id, name=adapter.name, job_id=adapter.job_id, sha256=adapter.sha256,
                      size_bytes=adapter.size_bytes,
                      base_model=AdapterBaseModelOut(name_or_path=base.get("name_or_path"),
                                                     revision=base.get("revision")),
                      lora=lora_out(read_adapter_config(settings, adapter.path)), provenance=adapter.provenance or {},
                      eval_report=adapter.eval_report, deploy_gate=adapter.deploy_gate, created_at=adapter.created_at)


@router.get("/adapters", response_model=Page[AdapterOut], responses=problems(400, 401, 422),
            summary="Your registered adapters, newest first",
            description="Every adapter a succeeded job registered for your tenant, newest first, with its base "
            "model, LoRA settings, provenance and evaluation report. Paginated (`next_cursor` back as `cursor`).")
def list_adapters(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    paging: PaginationDep,
) -> Page[AdapterOut]:
    page = adapter_access.list_adapters(session, tenant_id=principal.tenant_id, limit=paging.size(settings),
                                        cursor=paging.cursor)
    return Page[AdapterOut](data=[adapter_out(a, settings) for a in page.items], next_cursor=page.next_cursor)


@router.get("/adapters/{adapter_id}", response_model=AdapterOut, responses=problems(401, 404),
            summary="One adapter with its base model, LoRA settings, provenance, evaluation and deploy-gate result",
            description="One adapter: the base model it was trained on, its LoRA settings as its "
            "adapter_config.json has them, provenance (job, policy hash, dataset and its hash, judge, method, "
            "parent), the evaluation report, and the deploy gate's cached result once the gateway has served it.")
def get_adapter(adapter_id: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> AdapterOut:
    adapter = adapter_access.get_adapter(session, tenant_id=principal.tenant_id, adapter_id=adapter_id)
    return adapter_out(adapter, settings)


@router.get("/adapters/{adapter_id}/download", responses={
    **problems(401, 404, 410, 422),
    200: {"description": "tar.gz (default): the adapter directory `<name>/` with adapter_config.json and "
                         "adapter_model.safetensors, loadable by peft and vLLM once extracted; format=safetensors: "
                         "the weights file alone",
          "content": {"application/gzip": {}, "application/octet-stream": {}}}},
    summary="Download the adapter: its directory as a tar.gz, or only its safetensors weights",
    description="The default tar.gz holds `<name>/adapter_config.json` and `<name>/adapter_model.safetensors`: "
    "extract it and load `<name>` with `peft.PeftModel.from_pretrained(base, name)` or "
    "`vllm serve BASE --enable-lora --lora-modules name=name`. `format=safetensors` sends the weights file alone, "
    "with its sha256 in `X-Content-SHA256`. 410 when the adapter's files are gone from storage.")
def download_adapter(
    adapter_id: str,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    archive_format: Annotated[Literal["tar.gz", "safetensors"], Query(
        alias="format", description="tar.gz: the adapter directory (peft / vLLM load it as is); safetensors: "
                                    "the weights only")] = "tar.gz",
) -> Response:
    adapter = adapter_access.get_adapter(session, tenant_id=principal.tenant_id, adapter_id=adapter_id)
    if archive_format == "safetensors":
        path = _weights(settings, adapter)
        return FileResponse(path, media_type="application/octet-stream", filename=f"{adapter.name}.safetensors",
                            headers={"X-Content-SHA256": adapter.sha256, "X-Adapter-Weights-SHA256": adapter.sha256})
    return adapter_archive(adapter, settings)


def _weights(settings: Settings, adapter: Adapter) -> Any:
    path = weights_file(settings, adapter.path)
    if path.is_symlink() or not path.is_file():
        raise ProblemError(410, f"adapter {adapter.id}'s weights are gone from storage", slug="adapter-files-missing")
    return path


def adapter_archive(adapter: Adapter, settings: Settings) -> StreamingResponse:
    """The adapter directory as a streamed tar.gz: `<name>/adapter_config.json` (its base model as the job named
    it, never a server path) and `<name>/adapter_model.safetensors` (the registered bytes)."""
    path = _weights(settings, adapter)
    config = read_adapter_config(settings, adapter.path)
    if config is None:
        raise ProblemError(410, f"adapter {adapter.id}'s {ADAPTER_CONFIG} is gone from storage or unreadable",
                           slug="adapter-files-missing")
    portable = json.dumps(portable_adapter_config(config, base_model_of(adapter)), indent=2).encode() + b"\n"
    folder = archive_folder_name(adapter.name, adapter.id)
    try:
        chunks = tar_gz_stream(folder, [(ADAPTER_CONFIG, portable), (ADAPTER_WEIGHTS, path)],
                               mtime=int(adapter.created_at.timestamp()))
    except ArchiveError as exc:  # e.g. the weights file was replaced by a symlink
        log.warning("adapter %s cannot be archived: %s", adapter.id, exc)
        raise ProblemError(410, f"adapter {adapter.id}'s files cannot be served: {exc}",
                           slug="adapter-files-missing") from None
    return StreamingResponse(chunks, media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="{folder}.tar.gz"',
        "X-Adapter-Weights-SHA256": adapter.sha256})


@router.delete("/adapters/{adapter_id}", status_code=204, responses=problems(401, 404),
               summary="Delete an adapter: unloaded from serving, removed from the registry and from storage",
               description="Unloads the adapter from the serving backend, removes it from the registry and "
               "deletes its files; the job that produced it is kept. Answers 204 with no body.")
async def delete_adapter(adapter_id: str, request: Request, principal: PrincipalDep) -> Response:
    settings = request.app.state.settings

    def remove() -> str:
        with request.app.state.sessions() as session:
            adapter = adapter_access.delete_adapter(session, tenant_id=principal.tenant_id,
                                                    adapter_id=adapter_id)
            session.commit()
            return adapter.path

    path = await anyio.to_thread.run_sync(remove)
    serving = getattr(request.app.state, "serving", None)
    if serving is not None:
        with contextlib.suppress(Exception):  # the backend may be down; a deleted adapter is never resolved again
            await serving.forget(adapter_id)
    await anyio.to_thread.run_sync(remove_adapter_files, settings, path)
    return Response(status_code=204)
