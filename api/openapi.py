"""The OpenAPI document, corrected where FastAPI's defaults would lie or say too little: errors are problem+json,
not `HTTPValidationError`; the parameters every route shares (ids, pagination, headers) are described once here;
request bodies carry named examples; and `/docs` serves Swagger UI from the vendored assets in api/static/swagger
(no CDN: the docs work offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.routes import PROBLEM_CONTENT
from api.schemas import Problem
from core.jobspec import EVAL_EXAMPLES, REALIGN_EXAMPLES, EvalRequest, RealignRequest

SWAGGER_DIR = Path(__file__).resolve().parent / "static" / "swagger"
DOCS_URL = "/docs"
DOCS_ASSETS_URL = "/docs/assets"
# Swagger UI options: no call to the public validator (validator.swagger.io), keep the key across reloads.
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None, "persistAuthorization": True,
                                         "displayRequestDuration": True}

API_DESCRIPTION = """Re-align a deployed LLM to a changed policy (TRACE) as queued jobs.

- **Auth**: every `/v1` route takes `Authorization: Bearer <API key>` (`realign keys create --tenant NAME`); every
  object belongs to the key's tenant, and another tenant's object is a 404.
- **Flow**: upload pairs (`POST /v1/files`) or name a dataset, `POST /v1/realign`, follow the job
  (`GET /v1/jobs/{job_id}`, or its events as server-sent events), then use the registered adapter: download it
  (`GET /v1/adapters/{adapter_id}/download`) or talk to it through the OpenAI-compatible gateway
  (`POST /v1/chat/completions` with `model` = the adapter's name, where a serving backend is configured).
- **Errors** are RFC 9457 problem details (`application/problem+json`) with field errors in `errors`; the
  gateway's routes answer OpenAI-style errors instead.
- **Lists** are paginated: pass `next_cursor` back as `cursor` until it is null.
"""
PARAMETER_DESCRIPTIONS: dict[str, str] = {
    "job_id": "the job's id (`job_...`), as POST /v1/realign or POST /v1/evals returned it",
    "file_id": "the file's id (`file_...`), as POST /v1/files returned it",
    "adapter_id": "the adapter's id (`ada_...`), as GET /v1/adapters lists it",
    "pair_id": "the pair's id, as GET /v1/jobs/{job_id}/triage lists it",
    "name": "the artifact's name, as GET /v1/jobs/{job_id}/artifacts lists it",
    "limit": "page size (the server caps it)",
    "cursor": "`next_cursor` of the previous page; leave it out for the first page",
    "category": "only pairs of this triage category",
    "Idempotency-Key": "any unique string: sending the same body again with the same key returns the first job "
                       "(`Idempotent-Replayed: true`) instead of creating another; the same key with another body "
                       "is a 422",
    "Last-Event-ID": "with `Accept: text/event-stream`: resume after this event id (browsers' EventSource sends "
                     "it when they reconnect)",
}
TAGS: list[dict[str, str]] = [  # the groups of /docs, in this order
    {"name": "jobs", "description": "Re-alignment jobs: submit, follow (state, progress, events), cancel, retry; "
                                    "their triaged pairs, artifacts, training metrics and impact scores"},
    {"name": "review", "description": "Human review of a job's triage before training (jobs with `review: true`)"},
    {"name": "files", "description": "Upload and inspect preference-pair files"},
    {"name": "adapters", "description": "The registry of trained LoRA adapters: provenance, download, delete"},
    {"name": "evals", "description": "Evaluation jobs: an adapter or base model against a policy"},
    {"name": "gateway", "description": "OpenAI-compatible generation with your adapters (when a serving backend "
                                       "is configured)"},
    {"name": "health", "description": "Liveness, readiness and the operator's metrics"},
]
# FastAPI's "Successful Response" says nothing; what a success means per status code.
SUCCESS_DESCRIPTIONS = {"200": "OK", "201": "Created: the new object", "202": "Accepted: the job as it stands now "
                        "(its work goes on in the background)", "204": "Done (no body)"}
REQUEST_EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    RealignRequest.__name__: REALIGN_EXAMPLES,
    EvalRequest.__name__: EVAL_EXAMPLES,
    "CategoryChange": {  # api/routes/review.py
        "retain": {"summary": "The reviewer disagrees with the judge: keep this pair as it was",
                   "value": {"category": "RETAIN"}},
        "invert": {"summary": "The old chosen answer violates the new policy: train on the swapped pair",
                   "value": {"category": "INVERT"}},
    },
}


def _document_operation(operation: dict[str, Any]) -> None:
    """Shared parameter descriptions (where a route gave none), named request examples, problem+json 422s."""
    for parameter in operation.get("parameters", []):
        if not parameter.get("description") and parameter.get("name") in PARAMETER_DESCRIPTIONS:
            parameter["description"] = PARAMETER_DESCRIPTIONS[parameter["name"]]
    media = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if media is not None:
        name = media.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
        if name in REQUEST_EXAMPLES:
            media.setdefault("examples", REQUEST_EXAMPLES[name])
    responses = operation.get("responses", {})
    for status, response in responses.items():
        if response.get("description") == "Successful Response" and status in SUCCESS_DESCRIPTIONS:
            response["description"] = SUCCESS_DESCRIPTIONS[status]
    if "422" in responses:
        responses["422"] = {"description": "Invalid request (field errors in `errors`)", "content": PROBLEM_CONTENT}


def install_openapi(app: FastAPI) -> None:
    """Replace `app.openapi` with the corrected document and serve `/docs` offline. The app must be created with
    `docs_url=None` (FastAPI's own page loads Swagger UI from a CDN)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=API_DESCRIPTION, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in Problem.model_json_schema(ref_template="#/components/schemas/{model}").get(
                "$defs", {}).items():
            components[name] = definition
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        problem.pop("$defs", None)
        components["Problem"] = problem
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                _document_operation(operation)
        schema["components"]["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "an API key (`realign keys create --tenant NAME` prints one)"}}
        schema["security"] = [{"bearer": []}]
        used = {tag for item in schema.get("paths", {}).values() for op in item.values() for tag in op.get("tags", [])}
        schema["tags"] = [tag for tag in TAGS if tag["name"] in used]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_docs(app)


def install_docs(app: FastAPI) -> None:
    """`/docs`: Swagger UI from the package's own assets (`/docs/assets/...`), nothing fetched from elsewhere."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=SWAGGER_DIR), name="swagger-ui-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"), title=f"{app.title} API",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS)
