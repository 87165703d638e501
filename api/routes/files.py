"""Uploaded pair files: size-limited, validated row by row on upload, stored under a path derived from the id."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request, UploadFile
from fastapi import File as FormFile

from api.deps import PaginationDep, PrincipalDep, SessionDep, SettingsDep
from api.errors import ProblemError
from api.routes import problems
from api.schemas import FileOut, Page
from core.db.access import files as file_access
from core.db.models import File, new_id
from core.settings import Settings
from trace_engine.data.io import DatasetError
from trace_engine.data.load import load_pairs
from trace_engine.data.validate import ValidationReport, unstorable_char

router = APIRouter(prefix="/v1", tags=["files"])
FORMATS_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
CHUNK_BYTES = 1024 * 1024
MAX_ERRORS_IN_PROBLEM = 100


def stored_path(settings: Settings, file_id: str, fmt: str) -> Path:
    """Where a file lives: derived from its id and format only, never from the client's filename."""
    return settings.files_dir / f"{file_id}.{fmt}"


def file_out(record: File) -> FileOut:
    return FileOut(id=record.id, filename=record.filename, format=record.format, size_bytes=record.size_bytes,
                   sha256=record.sha256, rows=record.rows, pairs=record.pairs, report=record.report,
                   created_at=record.created_at)


def _format_of(filename: str) -> str:
    fmt = FORMATS_BY_SUFFIX.get(Path(filename).suffix.lower())
    if fmt is None:
        raise ProblemError(422, f"cannot tell the format of {filename!r}: name it .jsonl, .json or .parquet",
                           slug="unsupported-format",
                           errors=[{"loc": ["body", "file"], "field": "file", "kind": "unsupported_format",
                                    "message": "file name must end in .jsonl, .ndjson, .json or .parquet"}])
    return fmt


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, f"upload is larger than the limit of {limit} bytes", slug="upload-too-large",
                        max_bytes=limit)


def _copy_limited(upload: UploadFile, target: Path, limit: int) -> tuple[int, str]:
    """Copy at most `limit` bytes; returns (size, sha256). Raises 413 (and removes `target`) past the limit."""
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        while chunk := upload.file.read(CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                out.close()
                target.unlink(missing_ok=True)
                raise _too_large(limit)
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def invalid_rows(filename: str, report: ValidationReport, summary: dict[str, Any]) -> ProblemError:
    """The 422 for a file with row errors. Its counts agree everywhere: `error_count` and `report.issues_by_kind`
    count every issue; `errors` (at most MAX_ERRORS_IN_PROBLEM) and `report.issues` are capped examples, and the
    problem says so (`errors_capped`, `report.issues_note`)."""
    errors = [{"row": i.row, "field": i.field, "kind": i.kind, "message": i.message}
              for i in report.issues if i.severity == "error"][:MAX_ERRORS_IN_PROBLEM]
    first = next((i for i in report.issues if i.severity == "error"), "(not among the stored issues)")
    capped = len(errors) < report.error_count
    shown = f"; errors lists the first {len(errors)} (all are counted in report.issues_by_kind)" if capped else ""
    return ProblemError(422, f"{report.error_count} row error(s) in {filename}; first: {first}{shown}",
                        slug="invalid-rows", title="File has invalid rows", errors=errors,
                        error_count=report.error_count, errors_capped=capped, report=summary)


@router.post("/files", status_code=201, response_model=FileOut, responses=problems(401, 413, 422, 429),
             summary="Upload a pair file (JSONL, JSON or Parquet)",
             description="A multipart upload (`file`) of preference pairs: rows `{prompt, chosen, rejected}` (plus "
             "an optional `id` and any extra fields, kept). The format comes from the file name (.jsonl, .json, "
             ".parquet). Every row is checked now: a row error rejects the upload with each error's row and field "
             "(422), and so does a file without a usable pair; 413 past the upload limit. Use the returned `id` as "
             "`dataset.file_id` of a job.")
def upload_file(
    request: Request,
    file: Annotated[UploadFile, FormFile(description="rows of {prompt, chosen, rejected[, id, ...]}")],
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> FileOut:
    """Every row is validated now; any row error rejects the upload with each error's row and field (422)."""
    from api.routes.jobs import enforce_quotas

    enforce_quotas(session, settings, principal.tenant_id, new_job=False)  # 429 past the submission rate
    filename = Path(file.filename or "upload").name[:255]
    bad = unstorable_char(filename)
    if bad is not None:
        raise ProblemError(422, f"the file name contains {bad}", slug="invalid-characters",
                           errors=[{"loc": ["body", "file"], "field": "file", "kind": "unstorable_text",
                                    "message": f"file name contains {bad}"}])
    fmt = _format_of(filename)
    file_id = new_id("file")
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    partial = settings.files_dir / f".{file_id}.partial"
    final = stored_path(settings, file_id, fmt)
    try:
        size, sha256 = _copy_limited(file, partial, settings.max_upload_bytes)
        try:
            _pairs, report = load_pairs(partial, fmt=fmt)
        except (DatasetError, ValueError, OSError) as exc:  # pyarrow errors are ValueErrors
            raise ProblemError(422, f"unreadable {fmt} file: {exc}", slug="invalid-file") from None
        report.source = filename
        summary = report.to_dict()
        if not report.ok:
            raise invalid_rows(filename, report, summary)
        if report.pairs_kept == 0:
            raise ProblemError(422, f"{filename} holds no preference pairs", slug="empty-file", report=summary)
        os.replace(partial, final)
        record = file_access.create_file(session, file_id=file_id, tenant_id=principal.tenant_id,
                                         filename=filename, fmt=fmt, size_bytes=size, sha256=sha256,
                                         rows=report.rows_read, pairs=report.pairs_kept, report=summary)
        session.commit()
    except BaseException:
        partial.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise
    request.app.state.metrics.files_uploaded.inc()
    return file_out(record)


@router.get("/files", response_model=Page[FileOut], responses=problems(400, 401, 422), summary="List files, newest first",
            description="Your uploaded pair files with their validation reports, newest first, paginated "
            "(`next_cursor` back as `cursor`).")
def list_files(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    paging: PaginationDep,
) -> Page[FileOut]:
    page = file_access.list_files(session, tenant_id=principal.tenant_id, limit=paging.size(settings),
                                  cursor=paging.cursor)
    return Page[FileOut](data=[file_out(f) for f in page.items], next_cursor=page.next_cursor)


@router.get("/files/{file_id}", response_model=FileOut, responses=problems(401, 404), summary="One file",
            description="One uploaded file: name, format, size, sha256, rows read, pairs kept and the validation "
            "report.")
def get_file(file_id: str, session: SessionDep, principal: PrincipalDep) -> FileOut:
    return file_out(file_access.get_file(session, tenant_id=principal.tenant_id, file_id=file_id))
