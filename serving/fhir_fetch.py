"""The chart a CDS Hooks client did not prefetch, read from its `fhirServer` (CDS Hooks 2.0, "FHIR
Resource Access"), only where ops allow that server.

    SPINECAST_CDS_FHIR_SERVERS=https://ehr.example.org/fhir  # comma-separated; empty: never fetch

A request's `fhirServer` is a URL chosen by the caller, so it is fetched only when it is exactly
one of the allowed base URLs (no prefix or host match), redirects are not followed, a search's
`next` page only when it lies under the same base, and the answers are capped in time and in bytes
(the hook's own body limit). The keys fetched are the prefetch templates discovery lists that the
request left out (a key sent as null means "no data" and is not fetched), with the request's
`fhirAuthorization` token as the bearer. Any failure is a 412 naming the prefetch key and the rule,
never the URL, the token or what came back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from urllib.parse import quote

import httpx

from . import cds
from .settings import Settings

# httpx logs every request's URL at INFO; a FHIR URL names the patient.
logging.getLogger("httpx").setLevel(logging.WARNING)
_FIELD = re.compile(r"\{\{context\.(\w+)\}\}")
MAX_PAGES = 20  # per search, following `next`


class _Budget:
    """Bytes left for every answer of one hook call together."""

    def __init__(self, limit: int):
        self.left = limit


def missing(service: str, request: cds.HookRequest) -> list[str]:
    """The prefetch keys of `service` the request left out."""
    return [k for k in cds.PREFETCH[service] if k not in (request.prefetch or {})]


def allowed(server: str | None, servers: frozenset[str]) -> bool:
    return server is not None and server.rstrip("/") in servers


async def complete(service: str, request: cds.HookRequest, settings: Settings) -> cds.HookRequest:
    """`request` with the prefetch keys it left out read from its fhirServer, when the settings
    allow that server; else unchanged (cds.chart answers 412 where the Patient is missing)."""
    keys = missing(service, request)
    if not keys or not allowed(request.fhirServer, settings.fhir_servers):
        return request
    timeout_s = settings.cds_fhir_timeout_s
    base = request.fhirServer.rstrip("/")
    headers = {"Accept": "application/fhir+json"}
    if request.fhirAuthorization is not None:
        headers["Authorization"] = f"Bearer {request.fhirAuthorization.access_token}"
    budget = _Budget(settings.max_batch_body_bytes)  # the hook's own body limit
    context = request.context.model_dump()
    async with httpx.AsyncClient(
        headers=headers, timeout=timeout_s, follow_redirects=False, trust_env=False
    ) as client:
        try:
            async with asyncio.timeout(timeout_s):
                found = await asyncio.gather(
                    *(
                        _read(client, base, k, cds.PREFETCH[service][k], context, budget)
                        for k in keys
                    )
                )
        except TimeoutError:
            raise cds.HookError(
                "fhirServer", f"did not answer within {timeout_s:g} s", 412
            ) from None
    prefetch = {**(request.prefetch or {}), **dict(zip(keys, found, strict=True))}
    return request.model_copy(update={"prefetch": prefetch})


async def _read(client, base: str, key: str, template: str, context: dict, budget) -> dict | None:
    """One prefetch template, resolved against the context and read; a search's pages joined."""
    url = f"{base}/" + _FIELD.sub(lambda m: quote(str(context.get(m[1]) or ""), safe=""), template)
    first = await _get(client, url, key, budget)
    if first.get("resourceType") != "Bundle":
        return first
    entries, page = list(first.get("entry") or []), first
    for _ in range(MAX_PAGES - 1):
        following = next(
            (link.get("url") for link in page.get("link") or [] if link.get("relation") == "next"),
            None,
        )
        if not isinstance(following, str) or not following.startswith(base + "/"):
            break  # a next page elsewhere is never fetched
        page = await _get(client, following, key, budget)
        entries += page.get("entry") or []
    return {**first, "entry": entries, "link": []}


async def _get(client: httpx.AsyncClient, url: str, key: str, budget: _Budget) -> dict:
    field = f"prefetch.{key}"
    try:
        async with client.stream("GET", url) as answer:
            if answer.status_code != 200:
                rule = f"fhirServer answered HTTP {answer.status_code} (redirects are not followed)"
                raise cds.HookError(field, rule, 412)
            body = bytearray()
            async for chunk in answer.aiter_bytes():
                body += chunk
                budget.left -= len(chunk)
                if budget.left < 0:
                    raise cds.HookError(field, "fhirServer's answers exceed the body limit", 412)
    except httpx.HTTPError as err:
        raise cds.HookError(field, f"fhirServer could not be read ({type(err).__name__})", 412)
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise cds.HookError(field, "fhirServer's answer is not a FHIR JSON resource", 412)
    return value
