"""The dashboard at `/ui`: static HTML, JS and CSS shipped in the package (`api/ui/`), no CDN and no build step.

The page holds no data of its own: it calls the authenticated API with the key the user types (kept in
`sessionStorage`), so it sees exactly what that key's tenant sees. Only the files present at import time are
served (no request string becomes a path), with a Content-Security-Policy that allows this origin only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from api.errors import ProblemError

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8"}
# Everything from this origin only: a page that tried to load a CDN asset would fail (and the browser test sees it).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
ASSETS: dict[str, Path] = {p.name: p for p in sorted(UI_DIR.iterdir())
                           if p.is_file() and p.suffix in CONTENT_TYPES} if UI_DIR.is_dir() else {}

router = APIRouter(include_in_schema=False)


def _asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None:
        raise ProblemError(404, f"no dashboard file {name!r}", slug="not-found")
    return Response(path.read_bytes(), media_type=CONTENT_TYPES[path.suffix],
                    headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"})


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
def ui_index() -> Response:
    return _asset("index.html")


@router.get("/ui/{name}")
def ui_file(name: str) -> Response:
    return _asset(name)
