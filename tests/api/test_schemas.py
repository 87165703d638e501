"""Every paginated list has one shape (`api.schemas.Page`) and one pair of query parameters (`api.deps.Pagination`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.schemas import JobOut, Page
from core.settings import Settings

from .support import RecordingEnqueuer


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("schemas")), RecordingEnqueuer())
    with TestClient(app) as client:
        yield client.get("/openapi.json").json()
    app.state.engine.dispose()


def list_routes(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, GET operation) of every route that takes a `cursor`."""
    for path, item in spec["paths"].items():
        operation = item.get("get", {})
        if any(p["name"] == "cursor" for p in operation.get("parameters", [])):
            yield path, operation


def test_every_list_route_is_paginated_the_same_way(spec: dict[str, Any]) -> None:
    routes = dict(list_routes(spec))
    assert {"/v1/jobs", "/v1/files", "/v1/adapters", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/triage",
            "/v1/jobs/{job_id}/scores", "/v1/jobs/{job_id}/metrics"} <= set(routes)
    for path, operation in routes.items():
        parameters = {p["name"]: p["schema"] for p in operation["parameters"]}
        assert {"type": "integer", "minimum": 1} in parameters["limit"]["anyOf"], path
        assert {"type": "string", "maxLength": 200} in parameters["cursor"]["anyOf"], path
        ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        body = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        assert {"object", "data", "next_cursor"} <= set(body["properties"]), path


def test_a_page_serialises_as_the_lists_always_did() -> None:
    page = Page[JobOut](data=[], next_cursor="abc")
    assert page.model_dump() == {"object": "list", "data": [], "next_cursor": "abc"}
