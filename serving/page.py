"""The clinician page at `/ui`: static files (`serving/ui/`: HTML, CSS, vanilla JS; no CDN, no
build step) served by the public service.

One route per file, read once at start-up, instead of a `StaticFiles` mount: the set of /ui paths
is then fixed, so `edge.KnownPaths` (which reads the routes) keeps any other /ui path out of the
metrics' `endpoint` labels, and no path under /ui can reach outside the folder. The files carry no
patient data, so the Guard serves them (GET and HEAD only) without the API key; the page's own calls
to /model, /predict and /explain send the key its user types in.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

UI = Path(__file__).with_name("ui")
PREFIX = "/ui"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere and runs no inline script: a browser holds it to that.
HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def is_page(method: str, path: str) -> bool:
    """A read of the page's files (what the Guard lets through without the key)."""
    return method in ("GET", "HEAD") and (path == PREFIX or path.startswith(PREFIX + "/"))


def _file(path: Path):
    body, media_type = path.read_bytes(), TYPES[path.suffix]

    async def endpoint(request) -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return endpoint


async def _home(request) -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/", status_code=308)


def routes() -> list[Route]:
    """`/ui` (redirects to `/ui/`), `/ui/` (index.html) and `/ui/<file>` for each file in `UI`."""
    files = sorted(p for p in UI.iterdir() if p.suffix in TYPES)
    return [
        Route(PREFIX, _home, methods=["GET"]),
        Route(f"{PREFIX}/", _file(UI / "index.html"), methods=["GET"]),
        *(Route(f"{PREFIX}/{p.name}", _file(p), methods=["GET"]) for p in files),
    ]
