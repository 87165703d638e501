"""The data-access layer's `NotFound` and `BadCursor` are mapped to problems once, in the error handlers: a route
lets them propagate (from its own thread too) and the client gets the same 404 / 400 problem every route gave when
it mapped them by hand. The pagination dependency validates `limit` and `cursor` the same way for every list route."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.deps import Pagination, PaginationDep
from api.errors import install_error_handlers
from core.db.access.common import BadCursor, NotFound
from core.settings import Settings

from .support import assert_problem


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/missing/{job_id}")
    def missing(job_id: str) -> None:
        raise NotFound(f"job {job_id} not found")

    @app.get("/missing-in-a-thread/{job_id}")
    async def missing_in_a_thread(job_id: str) -> None:
        def load() -> None:
            raise NotFound(f"job {job_id} not found")

        await anyio.to_thread.run_sync(load)

    @app.get("/page")
    def page(paging: PaginationDep) -> dict[str, Any]:
        if paging.cursor == "stale":
            raise BadCursor(f"invalid cursor {paging.cursor!r}")
        return {"limit": paging.limit, "cursor": paging.cursor}

    return TestClient(app)


@pytest.mark.parametrize("path", ["/missing/job_1", "/missing-in-a-thread/job_1"])
def test_not_found_is_a_404_problem_naming_the_object(client: TestClient, path: str) -> None:
    problem = assert_problem(client.get(path), 404)
    assert problem == {"type": "urn:realign:problem:not-found", "title": "Not Found", "status": 404,
                       "detail": "job job_1 not found", "instance": path}


def test_a_bad_cursor_is_a_400_problem_saying_what_to_send(client: TestClient) -> None:
    problem = assert_problem(client.get("/page", params={"cursor": "stale"}), 400)
    assert problem == {"type": "urn:realign:problem:bad-cursor", "title": "Bad Request", "status": 400,
                       "detail": "invalid cursor 'stale'; pass back the next_cursor of a previous page",
                       "instance": "/page"}


def test_pagination_parameters_are_validated_once_for_every_list(client: TestClient) -> None:
    assert client.get("/page").json() == {"limit": None, "cursor": None}
    assert client.get("/page", params={"limit": 3, "cursor": "abc"}).json() == {"limit": 3, "cursor": "abc"}
    assert_problem(client.get("/page", params={"limit": 0}), 422)
    assert_problem(client.get("/page", params={"cursor": "x" * 201}), 422)


@pytest.mark.parametrize(("limit", "expected"), [(None, 50), (7, 7), (10_000, 200)])
def test_the_page_size_is_the_clients_limit_within_the_servers_cap(limit: int | None, expected: int,
                                                                   tmp_path: Any) -> None:
    settings = Settings(data_dir=tmp_path, default_page_size=50, max_page_size=200)
    assert Pagination(limit=limit, cursor=None).size(settings) == expected
