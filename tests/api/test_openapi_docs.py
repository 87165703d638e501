"""`/docs` works offline: the page loads Swagger UI from the package's vendored assets, never from a CDN, and the
assets are served and shipped in the wheel. With Playwright and a Chromium, a real browser renders the page on a
live server with every non-loopback request blocked, and shows every operation."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.openapi import DOCS_ASSETS_URL, SWAGGER_DIR
from core.settings import Settings
from trace_engine.serving.uvicorn_thread import serve_in_thread

from .support import Harness, RecordingEnqueuer

REPO = Path(__file__).resolve().parents[2]
# src="..." / href="..." attributes, CSS url(...), and quoted absolute URLs anywhere in the page's own text
ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", re.I)
CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)""", re.I)
ABSOLUTE = re.compile(r"""["'](?:https?:)?//[^"']+["']""", re.I)
PAGE_ASSETS = {"swagger-ui-bundle.js": "javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}


def external(url: str) -> bool:
    """A URL that would leave this server (absolute http(s), protocol-relative, or another scheme but data:)."""
    parsed = urlparse(url)
    return bool(parsed.netloc) or parsed.scheme not in ("", "data")


def test_the_docs_page_references_only_this_server(harness: Harness) -> None:
    response = harness.client.get("/docs")
    assert response.status_code == 200
    page = response.text
    references = ATTRIBUTE.findall(page)
    assert {r.rsplit("/", 1)[-1] for r in references} == set(PAGE_ASSETS)
    assert all(r.startswith(DOCS_ASSETS_URL + "/") for r in references), references
    assert not [r for r in references if external(r)]
    assert not ABSOLUTE.findall(page), "the page names an absolute URL"
    assert "'/openapi.json'" in page  # the spec from this server
    assert '"validatorUrl": null' in page  # Swagger UI would otherwise call validator.swagger.io


def test_the_check_catches_a_cdn_page() -> None:
    """The page FastAPI serves by default loads Swagger UI from jsDelivr: the checks above would fail on it."""
    from fastapi.openapi.docs import get_swagger_ui_html

    page = get_swagger_ui_html(openapi_url="/openapi.json", title="x").body.decode()
    assert [r for r in ATTRIBUTE.findall(page) if external(r)]
    assert ABSOLUTE.findall(page)


def test_the_assets_are_served(harness: Harness) -> None:
    for name, media in PAGE_ASSETS.items():
        response = harness.client.get(f"{DOCS_ASSETS_URL}/{name}")
        assert response.status_code == 200, name
        assert media in response.headers["content-type"], (name, response.headers["content-type"])
        assert response.content == (SWAGGER_DIR / name).read_bytes()
    assert "SwaggerUIBundle" in harness.client.get(f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js").text
    assert harness.client.get(f"{DOCS_ASSETS_URL}/../settings.py").status_code == 404
    assert harness.client.get(f"{DOCS_ASSETS_URL}/missing.js").status_code == 404
    assert harness.client.get("/redoc").status_code == 404  # FastAPI's ReDoc page would load from a CDN


def test_the_stylesheet_fetches_nothing_from_elsewhere() -> None:
    css = (SWAGGER_DIR / "swagger-ui.css").read_text(encoding="utf-8")
    assert "@import" not in css
    urls = CSS_URL.findall(css)
    assert urls and all(u.startswith("data:") or not external(u) for u in urls), [u[:60] for u in urls
                                                                                   if external(u)]


def test_the_assets_ship_with_their_licence_in_the_wheel() -> None:
    assert "Apache License" in (SWAGGER_DIR / "LICENSE").read_text(encoding="utf-8")
    assert (SWAGGER_DIR / "NOTICE").is_file() and (SWAGGER_DIR / "swagger-ui-bundle.js.LICENSE.txt").is_file()
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")  # (no tomllib on Python 3.10)
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    package_data = json.loads(re.search(r"^api = (\[.*\])$", section, re.M).group(1))  # type: ignore[union-attr]
    shipped = [p for p in SWAGGER_DIR.iterdir()
               if any(fnmatch.fnmatch(str(p.relative_to(REPO / "api")), g) for g in package_data)]
    assert sorted(shipped) == sorted(SWAGGER_DIR.iterdir())


def _chromium() -> str | None:
    for name in (os.environ.get("REALIGN_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture
def live_docs(tmp_path: Path) -> Iterator[str]:
    app = create_app(Settings(data_dir=tmp_path / "state"), RecordingEnqueuer())
    try:
        with serve_in_thread(app) as base_url:
            yield base_url
    finally:
        app.state.engine.dispose()


def test_a_browser_renders_the_docs_with_the_network_cut_off(live_docs: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium on PATH (set REALIGN_CHROMIUM)")
    blocked: list[str] = []
    failed: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()

            def route(request_route: object) -> None:
                url = request_route.request.url  # type: ignore[attr-defined]
                if url.startswith(live_docs + "/") or url.startswith("data:"):
                    request_route.continue_()  # type: ignore[attr-defined]
                else:
                    blocked.append(url)
                    request_route.abort()  # type: ignore[attr-defined]

            page.route("**/*", route)
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(urljoin(live_docs, "/docs"))
            page.wait_for_selector(".opblock", timeout=30_000)
            spec = page.evaluate("fetch('/openapi.json').then(r => r.json())")
            operations = sum(len(item) for item in spec["paths"].values())
            assert page.locator(".opblock").count() == operations
            assert page.locator(".info .title").inner_text().startswith("realign")
        finally:
            browser.close()
    assert not blocked, f"the page tried to reach: {blocked}"
    assert not failed, f"requests that failed: {failed}"


def test_docs_need_no_api_key(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "state"), RecordingEnqueuer())
    with TestClient(app) as client:
        assert client.get("/docs").status_code == 200
        assert client.get(f"{DOCS_ASSETS_URL}/swagger-ui.css").status_code == 200
    app.state.engine.dispose()
