"""What the server does before BentoML sees a request: connection cap, header deadline, unknown
paths, and log hygiene. Installed by `install()` when the service module is imported (in every
server process, before uvicorn starts).

BentoML starts uvicorn itself and exposes none of these settings, so `install` swaps the protocol
class and wraps the app through `uvicorn.Config` (the one place both pass through):

- `GuardedH11`: a connection over `SPINECAST_MAX_CONNECTIONS` gets a canned 503 with `Retry-After`
  and is closed before anything is read; a request whose headers are not complete within
  `SPINECAST_HEADER_TIMEOUT_S` of the connection (or of the previous response on a kept-alive
  connection) gets 408 and is closed. Uvicorn itself has no header deadline.
- `KnownPaths`: a path that no route serves becomes `/unknown` before BentoML's metrics and access
  log read it, so a client cannot grow the `endpoint` label set of `/metrics` (one series per path)
  or write its own text into the log; it is answered 404 as before. The series of every route and
  status are created after the first request, so /metrics keeps one size.
- `clean_log_records`: every log record's message has control characters (CR, LF, ESC, NUL...)
  escaped, so no client input forges a log line or an ANSI sequence.
- `OneLineClientErrors`: BentoML logs every 4xx and every deliberate 503 as an ERROR with a
  traceback; they become one WARNING line naming the route and the status.
"""

from __future__ import annotations

import contextlib
import logging
import re

import h11
import uvicorn
from starlette.routing import Match, Mount
from uvicorn.protocols.http.h11_impl import H11Protocol

UNKNOWN_PATH = "/unknown"


def _canned(status: str, body: bytes, *extra: bytes) -> bytes:
    head = [
        f"HTTP/1.1 {status}".encode(),
        b"content-type: application/json",
        f"content-length: {len(body)}".encode(),
        b"connection: close",
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


BUSY = _canned(
    "503 Service Unavailable",
    b'{"error": "too many open connections; retry later"}',
    b"retry-after: 1",
)


def _headers_late(seconds: float) -> bytes:
    return _canned(
        "408 Request Timeout",
        f'{{"error": "request headers must arrive within {seconds:g} s"}}'.encode(),
    )


class GuardedH11(H11Protocol):
    """Uvicorn's h11 protocol with a connection cap and a deadline on the request headers (both
    set by `install`)."""

    _header_timer = None
    max_connections = 512
    header_timeout_s = 10.0
    header_timeout = _headers_late(header_timeout_s)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(BUSY)
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.write(self.header_timeout)
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if (
            self.conn.their_state is not h11.IDLE
        ):  # the headers are in: the body has its own deadline
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def _served(routes, scope) -> bool:
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        if (
            isinstance(route, Mount) and route.routes
        ):  # a mounted app: one of its routes must serve it
            if _served(route.routes, {**scope, **child}):
                return True
            continue
        return True
    return False


# Statuses each kind of route answers besides 200 and 500 (which BentoML creates series for itself).
PUBLIC_STATUSES = (400, 401, 413, 415, 503)
UNKNOWN_STATUSES = (401, 404)
MODEL_STATUSES = (503,)


def _prime_metrics(app) -> None:
    """Create the request series of every route and the statuses it answers up front, as BentoML
    does for 200 and 500: then /metrics has its full size from the first scrape and grows with no
    traffic (and `rate()` sees a status from its first occurrence). Reaches BentoML's metrics
    middleware in the app's middleware stack; if its shape changes, this does nothing."""
    from bentoml._internal.context import server_context

    node = getattr(app, "middleware_stack", None)
    while node is not None and not hasattr(node, "metrics_request_total"):
        node = getattr(node, "app", None)
    if node is None:
        return
    public = server_context.service_type == "entry_service"
    routes = [
        (route, PUBLIC_STATUSES if public else MODEL_STATUSES)
        for route in server_context.service_routes
    ]
    for endpoint, statuses in [*routes, (UNKNOWN_PATH, UNKNOWN_STATUSES)]:
        labels = {
            "endpoint": endpoint,
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }
        for code in statuses:
            node.metrics_request_total.labels(**labels, http_response_code=code)
        for code in (200, 500, *statuses):
            node.metrics_request_duration.labels(**labels, http_response_code=code)


class KnownPaths:
    """ASGI wrapper, outermost: the path of a request no route serves becomes `UNKNOWN_PATH`; after
    the first request, the metrics series of every known route are primed (`_prime_metrics`)."""

    def __init__(self, app):
        self.app, self.primed = app, False

    async def __call__(self, scope, receive, send):
        routes = getattr(
            self.app, "routes", None
        )  # None: an app of another shape; every path passes
        if scope["type"] == "http" and routes is not None and not _served(routes, scope):
            scope = {
                **scope,
                "path": UNKNOWN_PATH,
                "raw_path": UNKNOWN_PATH.encode(),
                "query_string": b"",
            }
        try:
            return await self.app(scope, receive, send)
        finally:
            if not self.primed and scope["type"] == "http":
                self.primed = True
                with contextlib.suppress(
                    Exception
                ):  # metrics are an aid; never fail a request for them
                    _prime_metrics(self.app)


_CONTROL = re.compile(r"[\x00-\x1f\x7f\x80-\x9f]")


def escape_controls(text: str) -> str:
    """Control characters as visible escapes (`\\n`, `\\x1b`): one record stays one line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def clean_log_records() -> None:
    """Every record's message is rendered and escaped when it is made (tracebacks are left alone:
    they are ours, and their lines are not client text)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "spinecast_clean", False):
        return

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logging's problem, not ours
            return record
        record.msg, record.args = escape_controls(message), None
        return record

    factory.spinecast_clean = True
    logging.setLogRecordFactory(factory)


class OneLineClientErrors(logging.Filter):
    """BentoML's `log_exception` logs every failed API call as ERROR with its traceback. A client's
    mistake (4xx) or a deliberate 503 is not an error of the server: one WARNING line, no
    traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        err = record.exc_info[1]
        code = getattr(getattr(err, "error_code", None), "value", None)
        if type(err).__name__ == "ValidationError":
            code = 400
        if code is None or not (400 <= code < 500 or code == 503):
            return True
        record.msg = f"{escape_controls(record.getMessage())}: HTTP {code} ({type(err).__name__})"
        record.args, record.exc_info, record.exc_text = None, None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _Config(uvicorn.Config):
    def __init__(self, app, *args, **kwargs):
        kwargs.setdefault("http", GuardedH11)
        super().__init__(KnownPaths(app), *args, **kwargs)


def install(max_connections: int, header_timeout_s: float) -> None:
    """Idempotent; call at import time of the service module."""
    GuardedH11.max_connections, GuardedH11.header_timeout_s = max_connections, header_timeout_s
    GuardedH11.header_timeout = _headers_late(header_timeout_s)
    clean_log_records()
    log = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, OneLineClientErrors) for f in log.filters):
        log.addFilter(OneLineClientErrors())
    if uvicorn.Config is not _Config:
        uvicorn.Config = _Config
