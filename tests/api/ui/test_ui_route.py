"""The dashboard's static files (issue 13): served at /ui from the package with a same-origin-only CSP, nothing
fetched from another origin, no request string used as a path, and the API behind it still needs a key."""

from __future__ import annotations

import re

import pytest

from api.routes.ui import ASSETS, UI_DIR

from ..support import Harness

SQLITE = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)


@SQLITE
def test_the_dashboard_is_served_with_a_same_origin_policy(harness: Harness) -> None:
    redirect = harness.client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
    index = harness.client.get("/ui/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in index.headers["content-security-policy"]
    for name in re.findall(r'(?:src|href)="([^"#]+)"', index.text):
        if name.startswith(("/docs", "data:")):  # the API docs page; the inline empty favicon
            continue
        asset = harness.client.get(f"/ui/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert harness.client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert harness.client.get("/ui/style.css").headers["content-type"].startswith("text/css")
    assert "/ui/" not in harness.client.get("/openapi.json").text  # not part of the API's contract


@SQLITE
@pytest.mark.parametrize("name", ["missing.js", "..%2Fapp.py", "%2e%2e%2fschemas.py", "index.html%00.js", "UI"])
def test_only_the_packaged_files_are_served(harness: Harness, name: str) -> None:
    response = harness.client.get(f"/ui/{name}")
    assert response.status_code in (404, 422), (name, response.text[:200])  # NUL: refused by the app (422)


def test_no_asset_loads_anything_from_another_origin() -> None:
    assert {"index.html", "app.js", "charts.js", "style.css"} <= set(ASSETS)
    for path in UI_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        urls = [u for u in re.findall(r"https?://[^\s\"'`)]+", text) if u != "http://www.w3.org/2000/svg"]
        assert urls == [], (path.name, urls)
        assert "innerHTML" not in text, path.name  # data is rendered with textContent only


@SQLITE
def test_the_api_behind_the_dashboard_still_needs_a_key(harness: Harness) -> None:
    assert harness.client.get("/v1/jobs").status_code == 401
