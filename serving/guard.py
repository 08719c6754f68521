"""The request edge inside the app: the ASGI middleware `Guard` and the one shape of every 400.

`Guard` refuses what a route must never see (a second or wrong bearer token, a body that is not
JSON, a body over the route's limit or slower than its deadline) and rewrites every 400 BentoML
produces into the declared shape, `contract_error`: {"error", "detail", "errors": [{"field",
"rule"}]}, fields in one format (`patients.3.age`), never a client's text echoed back; and sends
every unsized answer whole, with its Content-Length. Starlette and pydantic only;
`tests/serving/test_guard.py` runs it in-process with Starlette's TestClient.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable

from starlette.responses import JSONResponse

from .cds import KNOWN_KEYS as CDS_KEYS
from .page import is_page
from .schemas import Patient

OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics")  # probes and scraping need no key


def _path(loc, body: object) -> str:
    """pydantic's error location as the one path format (`patients.3.age`). The name of an unknown
    key is client text: it is named by its position among its object's keys, never echoed."""
    parts, node = [], body
    for i, part in enumerate(loc):
        if (
            i == len(loc) - 1
            and isinstance(node, dict)
            and isinstance(part, str)
            and part not in _KNOWN_KEYS
        ):
            keys = list(node)
            parts.append(
                f"(unknown field {keys.index(part) + 1})" if part in keys else "(unknown field)"
            )
            break
        parts.append(str(part))
        node = (
            node.get(part)
            if isinstance(node, dict)
            else node[part]
            if isinstance(node, list) and isinstance(part, int) and part < len(node)
            else None
        )
    return ".".join(parts) or "body"


_KNOWN_KEYS = {"patient", "patients", *Patient.model_fields, *CDS_KEYS}


class _Huge:
    """An integer literal too long for any field (Python refuses over 4,300 digits)."""


def _json_problem(body: bytes) -> tuple[str, str] | None:
    """Where a body that pydantic's parser refused goes wrong, when Python's parser can say: an
    integer literal too long, or a string with an escape that is not valid Unicode (a lone
    surrogate)."""
    try:
        data = json.loads(
            body, parse_int=lambda digits: int(digits) if len(digits) <= 400 else _Huge()
        )
    except (ValueError, RecursionError):
        return None
    stack = [((), data)]
    while stack:
        loc, node = stack.pop()
        if isinstance(node, _Huge):
            return ".".join(map(str, loc)), "must be a number within the field's range"
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return ".".join(
                    map(str, loc)
                ), "must be valid Unicode text (an escape such as \\ud800 is not)"
        elif isinstance(node, dict):
            stack += [
                ((*loc, k if k in _KNOWN_KEYS else "(unknown field)"), v) for k, v in node.items()
            ]
        elif isinstance(node, list):
            stack += [((*loc, i), v) for i, v in enumerate(node)]
    return None


def contract_error(body: bytes, request: bytes = b"") -> dict:
    """BentoML's 400 bodies (pydantic's error list, or its own `[{"error": ...}]`) -> one shape, the
    declared one: {"error", "detail"} strings plus `errors`, a list of {"field", "rule"}, fields in
    one format (`patients.3.age`). `request` (the request body) lets a parse error name its
    field."""
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    errors = []
    if isinstance(data, dict) and isinstance(data.get("detail"), list):  # pydantic
        try:
            sent = json.loads(request) if request else None
        except (ValueError, RecursionError):
            sent = None
        for e in data["detail"]:
            if e.get("type") == "json_invalid":
                field, rule = _json_problem(request) or ("body", e.get("msg", "must be valid JSON"))
                errors.append({"field": field, "rule": rule})
                continue
            errors.append({"field": _path(e.get("loc", ()), sent), "rule": e.get("msg", "invalid")})
    else:  # ours: "field: rule; field: rule"
        message = (
            data[0].get("error", "")
            if isinstance(data, list) and data
            else str(data.get("error", ""))
        )
        for part in filter(None, (p.strip() for p in message.split("; "))):
            field, _, rule = part.partition(": ")
            errors.append(
                {"field": field, "rule": rule} if rule else {"field": "body", "rule": part}
            )
    if not errors:
        errors.append({"field": "body", "rule": "must be a JSON object that follows CONTRACT.md"})
    return {
        "error": f"the request breaks the API contract ({len(errors)} problem(s))",
        "detail": "; ".join(f"{e['field']}: {e['rule']}" for e in errors),
        "errors": errors,
    }


def _problem(status: int, field: str, rule: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": rule if field == "body" else f"{field}: {rule}",
            "detail": f"{field}: {rule}",
            "errors": [{"field": field, "rule": rule}],
        },
        status_code=status,
        headers=headers,
    )


class Guard:
    """ASGI middleware: exactly one bearer token (when `api_key` is set), JSON bodies only (415
    otherwise; BentoML would try multipart and pickle parsers), the body limit of the route (413;
    `limits` per path, else `max_body_bytes`), the body's read deadline (408), `Retry-After` from
    `retry_after()` on every 503 and 429, and one shape for every 400 body."""

    def __init__(
        self,
        app,
        *,
        api_key: str | None,
        max_body_bytes: int,
        limits: dict[str, int],
        body_timeout_s: float,
        retry_after: Callable[[], int],
    ):
        self.app = app
        self.key = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes, self.limits = max_body_bytes, limits
        self.body_timeout_s, self.retry_after = body_timeout_s, retry_after

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        limit = self.limits.get(scope["path"], self.max_body_bytes)
        too_large = _problem(413, "body", f"must be at most {limit:,} bytes on {scope['path']}")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await too_large(scope, receive, send)
        body, more = bytearray(), True
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while more:  # chunked bodies are counted as they arrive
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > limit:
                        return await too_large(scope, receive, send)
        except TimeoutError:
            late = _problem(
                408, "body", f"must arrive within {self.body_timeout_s:g} s", connection="close"
            )
            return await late(scope, receive, send)
        body, sent = bytes(body), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, _rewritten(send, body, self.retry_after))

    def _refusal(self, scope) -> JSONResponse | None:
        """The answer to a request refused on its headers alone, or None."""
        if scope["path"] in OPEN_PATHS or is_page(scope["method"], scope["path"]):
            return None  # the clinician page's files hold no patient data; its calls send the key
        tokens = [v for k, v in scope["headers"] if k == b"authorization"]
        if len(tokens) > 1:
            return _problem(400, "headers.authorization", "must be sent once")
        if self.key and not (tokens and hmac.compare_digest(tokens[0], self.key)):
            return JSONResponse(
                {"error": "a valid `Authorization: Bearer <key>` header is required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        content_type = (
            dict(scope["headers"])
            .get(b"content-type", b"application/json")
            .split(b";")[0]
            .strip()
            .lower()
        )
        if scope["method"] == "POST" and content_type != b"application/json":
            return _problem(415, "headers.content-type", "must be application/json")
        return None


def _rewritten(send, request: bytes, retry_after: Callable[[], int]):
    """Wrap `send`: a 400 response's body is rewritten by `contract_error`; a 503 or 429 gets
    `Retry-After` (the capacity's estimate of when the queue will have drained). A body sent in
    parts without a length (BentoML streams every API answer: a part, then an empty last one, so
    chunked encoding) is sent whole with its `Content-Length`: one write instead of three, and
    nothing for the client to reassemble (every answer here is bounded: JSON or a page file)."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def wrapped(message):
        nonlocal start
        if message["type"] == "http.response.start":
            headers = message["headers"]
            if message["status"] in (429, 503):
                headers = [(k, v) for k, v in headers if k.lower() != b"retry-after"]
                headers.append((b"retry-after", str(retry_after()).encode()))
                message = {**message, "headers": headers}
            if message["status"] != 400 and any(k.lower() == b"content-length" for k, _ in headers):
                return await send(message)  # sized already: passed on as it comes
            start = message
            return None
        if start is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        body = b"".join(chunks)
        drop = (b"content-length", b"transfer-encoding")
        headers = [(k, v) for k, v in start["headers"] if k.lower() not in drop]
        if start["status"] == 400:
            body = json.dumps(contract_error(body, request)).encode()
            headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
            headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        return await send({"type": "http.response.body", "body": body})

    return wrapped
