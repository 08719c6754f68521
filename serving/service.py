"""The SpineCast HTTP service (BentoML): CONTRACT.md section 2 over the torch-free predictor.

    bentoml serve spinecast.serving.service:SpineCast          # needs `spinecast:latest` in the model store

Two services: `SpineCast` (public: validation, auth, limits, admission, the routes) calls
`SpineCastModel` (the ONNX Runtime session) through `bentoml.depends`; concurrent `/predict` calls
reach the model's batchable `score` API, which BentoML's adaptive batching merges into one model
run; `/predict_batch` is scored in chunks. `edge.py` guards the connections (see SECURITY.md for
every protection and its limit).

Configuration (environment variables):
  SPINECAST_MODEL                  model tag in the BentoML store (default spinecast:latest)
  SPINECAST_API_KEY                when set, every route but the probes and /metrics needs `Authorization: Bearer <key>`
  SPINECAST_MAX_BODY_BYTES         body limit of /predict and /explain, 413 above it (default 1 MiB)
  SPINECAST_MAX_BATCH_BODY_BYTES   body limit of /predict_batch (default 16 MiB)
  SPINECAST_MAX_REQUEST_PIXELS     decoded pixels of all images of one request together (default 64 Mi)
  SPINECAST_BODY_TIMEOUT_S         a request's body must arrive within this (default 30), else 408
  SPINECAST_HEADER_TIMEOUT_S       a request's headers must arrive within this (default 10), else 408
  SPINECAST_MAX_CONNECTIONS        open connections per server process; above it 503 (default 512)
  SPINECAST_MAX_QUEUE_S            admission: work the model may have queued, in its own seconds (default
                                   20); a request that would not fit gets 503 with Retry-After at once
  SPINECAST_CHUNK_PATIENTS         /predict_batch is scored in model calls of at most this many (default 32)
  SPINECAST_SECONDS_PER_PATIENT    prior of the model's speed until it has been measured (default 0.25)
  SPINECAST_WORKERS                model workers (default 1); ONNX Runtime threads = cores / workers
  SPINECAST_ORT_THREADS            ONNX Runtime intra-op threads per worker (overrides the above)
  SPINECAST_BATCHING               1 (default) or 0: adaptive batching of /predict on or off
  SPINECAST_MAX_BATCH_SIZE         largest merged batch (default 32)
  SPINECAST_MAX_LATENCY_MS         queueing bound of a batched call; BentoML sheds a call (503) it predicts
                                   would exceed it (default 20000: under a burst, waiting beats failing)
  SPINECAST_EXPLAIN_MAX_SENTENCES  sentences occluded by /explain (default 64)
  SPINECAST_VARIANT                model variant of the bundle to serve (fp32, int8; default: the card's choice)
  SPINECAST_ORT_ARENA              1: ONNX Runtime's memory arena keeps its blocks between runs (memory stays
                                   at its peak); default 0: it hands them back after each run, so the
                                   resident memory of a long-running server stays flat
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import bentoml
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from spinecast.datasets.ids import UniqueIds
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import bundle as bundle_format
from . import edge
from .bundle import BundleError
from .capacity import Capacity, Once, Saturated
from .predictor import Predictor
from .schemas import (
    EXAMPLE_PATIENT,
    BatchRequest,
    ExplainedPrediction,
    Patient,
    Prediction,
    PredictionBatch,
    PredictRequest,
    check_images,
)

MODEL_TAG = os.environ.get("SPINECAST_MODEL", "spinecast:latest")
MAX_BODY_BYTES = int(os.environ.get("SPINECAST_MAX_BODY_BYTES", str(1 << 20)))
MAX_BATCH_BODY_BYTES = int(os.environ.get("SPINECAST_MAX_BATCH_BODY_BYTES", str(16 << 20)))
MAX_REQUEST_PIXELS = int(os.environ.get("SPINECAST_MAX_REQUEST_PIXELS", str(64 << 20)))
BODY_TIMEOUT_S = float(os.environ.get("SPINECAST_BODY_TIMEOUT_S", "30"))
WORKERS = int(os.environ.get("SPINECAST_WORKERS", "1"))
ORT_THREADS = int(os.environ.get("SPINECAST_ORT_THREADS", "0")) or max(
    1, (os.cpu_count() or 1) // WORKERS
)
BATCHING = os.environ.get("SPINECAST_BATCHING", "1") != "0"
MAX_BATCH_SIZE = int(os.environ.get("SPINECAST_MAX_BATCH_SIZE", "32"))
MAX_LATENCY_MS = int(os.environ.get("SPINECAST_MAX_LATENCY_MS", "20000"))
MAX_QUEUE_S = float(os.environ.get("SPINECAST_MAX_QUEUE_S", "20"))
CHUNK = int(os.environ.get("SPINECAST_CHUNK_PATIENTS", "32"))
SECONDS_PER_PATIENT = float(os.environ.get("SPINECAST_SECONDS_PER_PATIENT", "0.25"))
EXPLAIN_MAX_SENTENCES = int(os.environ.get("SPINECAST_EXPLAIN_MAX_SENTENCES", "64"))
VARIANT = os.environ.get("SPINECAST_VARIANT") or None
ORT_ARENA = os.environ.get("SPINECAST_ORT_ARENA", "0") == "1"
CALL_ATTEMPTS = 6
OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics")  # probes and scraping need no key
BODY_LIMITS = {"/predict_batch": MAX_BATCH_BODY_BYTES}  # every other route: MAX_BODY_BYTES

edge.install()
# One /explain scores one variant per sentence and field (batched): its prior is a quarter of that in patients.
CAPACITY = Capacity(
    MAX_QUEUE_S,
    SECONDS_PER_PATIENT,
    explain_units=(EXPLAIN_MAX_SENTENCES + 24) / 4,
    workers=WORKERS,
)
IMAGES = ThreadPoolExecutor(
    max_workers=2, thread_name_prefix="spinecast-images"
)  # decoding, off the event loop


def _verified_bundle() -> Path:
    """The model's folder in the store, its SHA256SUMS checked. This runs when `bentoml serve` (or
    `bentoml build`) imports this module, before any worker starts: a missing or damaged bundle stops
    the command with the reason and a non-zero exit (a failing worker would be restarted forever)."""
    try:
        path = Path(bentoml.models.get(MODEL_TAG).path)
    except bentoml.exceptions.NotFound:
        raise BundleError(
            f"model {MODEL_TAG} is not in the BentoML model store; save one with "
            "`spinecast export --bentoml` (or set SPINECAST_MODEL)"
        ) from None
    return bundle_format.verify(path)


BUNDLE = _verified_bundle()


def _records(patients: list[dict]) -> list[dict]:
    """Validated API patients -> predictor records: the base64 image becomes its bytes."""
    out = []
    for p in patients:
        image = p.get("mri_image")
        out.append({**p, "mri_image": base64.b64decode(image) if image else None})
    return out


def _field(batch: bool, i: int, name: str) -> str:
    return f"patients.{i}.{name}" if batch else f"patient.{name}"


async def _checked(patients: list[Patient], batch: bool) -> list[dict]:
    """Schema-valid patients (the schema is the cohort contract) as records, plus the rules a
    per-patient schema cannot state, each a 400 naming field and rule: patient_id unique within a
    batch, and images that decode within the pixel limits (in a thread: never on the event loop)."""
    records = [p.model_dump() for p in patients]
    problems = [
        (_field(batch, int(i), "patient_id"), "must be unique in the batch")
        for i in UniqueIds().add(r["patient_id"] for r in records)
    ]
    if any(r["mri_image"] for r in records):
        found = await asyncio.get_running_loop().run_in_executor(
            IMAGES, check_images, records, MAX_REQUEST_PIXELS
        )
        problems += [
            (
                _field(batch, i, "mri_image")
                if i is not None
                else ("patients" if batch else "patient"),
                rule,
            )
            for i, rule in found
        ]
    if problems:
        raise InvalidArgument("; ".join(f"{field}: {rule}" for field, rule in problems))
    return records


@bentoml.service(name="spinecast_model", workers=WORKERS, traffic={"timeout": 600})
class SpineCastModel:
    """The model: one verified bundle in one ONNX Runtime session per worker. Every API reports the
    seconds its model run took, which the public service's `Capacity` learns the model's speed from."""

    bundle = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        # Verified again (it may have changed since the import-time check).
        self.predictor = Predictor(
            self.bundle.path, VARIANT, threads=ORT_THREADS, keep_memory=ORT_ARENA
        )
        self.predictor.predict([EXAMPLE_PATIENT])  # warm-up: /readyz turns true only after this
        start = time.perf_counter()
        self.predictor.predict([{**EXAMPLE_PATIENT, "patient_id": str(i)} for i in range(8)])
        self.seconds_per_patient = (time.perf_counter() - start) / 8
        self.once = Once()

    @bentoml.api
    def speed(self) -> dict:
        """Seconds per patient measured at start-up (the public service's first estimate)."""
        return {"patient": self.seconds_per_patient}

    @bentoml.api(batchable=BATCHING, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def score(self, patients: list[dict]) -> list[dict]:
        """Adaptive batching merges concurrent /predict calls into one list here; two of them may
        be for the same patient, so the rows are scored under their position, not their id."""
        records = _records(patients)
        start = time.perf_counter()
        with _phi_free():
            out = self.predictor.predict(
                [{**r, "patient_id": str(i)} for i, r in enumerate(records)], validated=True
            )
        seconds = (time.perf_counter() - start) / max(1, len(records))
        return [
            {**o, "patient_id": r["patient_id"], "seconds": seconds} for o, r in zip(out, records)
        ]

    @bentoml.api
    def score_many(self, patients: list[dict], call_id: str = "") -> dict:
        return self.once(
            call_id, lambda: self._timed(self.predictor.predict, _records(patients), validated=True)
        )

    @bentoml.api
    def explain(self, patient: dict, call_id: str = "") -> dict:
        [record] = _records([patient])
        return self.once(
            call_id,
            lambda: self._timed(
                self.predictor.explain, record, max_sentences=EXPLAIN_MAX_SENTENCES, validated=True
            ),
        )

    @staticmethod
    def _timed(run, *args, **kwargs) -> dict:
        start = time.perf_counter()
        with _phi_free():
            out = run(*args, **kwargs)
        return {"out": out, "seconds": time.perf_counter() - start}


@contextlib.contextmanager
def _phi_free():
    """BentoML logs a failing call's exception text; ours may quote a value (a patient id in a
    contract error). Re-raise as its type name only, without the chain."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - every failure, reworded; the caller answers 503
        raise RuntimeError(f"model call failed: {type(err).__name__}") from None


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


_KNOWN_KEYS = {"patient", "patients", *Patient.model_fields}


class _Huge:
    """An integer literal too long for any field (Python refuses over 4,300 digits)."""


def _json_problem(body: bytes) -> tuple[str, str] | None:
    """Where a body that pydantic's parser refused goes wrong, when Python's parser can say: an
    integer literal too long, or a string with an escape that is not valid Unicode (a lone surrogate)."""
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
    one format (`patients.3.age`). `request` (the request body) lets a parse error name its field."""
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
    """ASGI middleware: exactly one bearer token (when configured), JSON bodies only (415 otherwise;
    BentoML would try multipart and pickle parsers), the body limit of the route (413), the body's
    read deadline (408), `Retry-After` on every 503, and one shape for every 400 body."""

    def __init__(self, app):
        self.app = app
        key = os.environ.get("SPINECAST_API_KEY")
        self.key = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        limit = BODY_LIMITS.get(scope["path"], MAX_BODY_BYTES)
        too_large = _problem(413, "body", f"must be at most {limit:,} bytes on {scope['path']}")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await too_large(scope, receive, send)
        body, more = bytearray(), True
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
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
                408, "body", f"must arrive within {BODY_TIMEOUT_S:g} s", connection="close"
            )
            return await late(scope, receive, send)
        body, sent = bytes(body), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, _rewritten(send, body))

    def _refusal(self, scope) -> JSONResponse | None:
        """The answer to a request refused on its headers alone, or None."""
        if scope["path"] in OPEN_PATHS:
            return None
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


def _rewritten(send, request: bytes):
    """Wrap `send`: a 400 response's body is buffered and rewritten by `contract_error`; a 503 or 429
    gets `Retry-After` (the capacity's estimate of when the queue will have drained)."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def wrapped(message):
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] in (429, 503):
            headers = [(k, v) for k, v in message["headers"] if k.lower() != b"retry-after"]
            message = {
                **message,
                "headers": [*headers, (b"retry-after", str(CAPACITY.retry_after()).encode())],
            }
        if message["type"] == "http.response.start" and message["status"] == 400:
            start = message
            return None
        if start is None:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        body = json.dumps(contract_error(b"".join(chunks), request)).encode()
        headers = [
            (k, v)
            for k, v in start["headers"]
            if k.lower() not in (b"content-length", b"content-type")
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({**start, "headers": headers})
        return await send({"type": "http.response.body", "body": body})

    return wrapped


_card: dict = {}


async def _model_card(request):
    return JSONResponse(_card)


@bentoml.asgi_app(Starlette(routes=[Route("/model", _model_card, methods=["GET"])]), path="/")
@bentoml.service(
    name="spinecast", traffic={"timeout": 3600}
)  # every model call has its own deadline
class SpineCast:
    """SpineCast: predicted 12-month outcomes of every spine treatment for one patient or many."""

    model = bentoml.depends(SpineCastModel)
    bundle = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        card = bundle_format.read(self.bundle.path).model_dump(mode="json")
        _card.update(card, input_schema=Patient.model_json_schema())
        self.calibrated = asyncio.Event()

    async def _call(self, kind: str, units: int, call, resend: bool = False):
        """One model call within its deadline. A call on a connection that the model service was
        closing is sent again (BentoML's client keeps idle connections 15 s, the server closes them
        after 5 s; bentoml/BentoML#4971), after a short pause. A call past its deadline is sent
        again once only where that cannot duplicate running work: `resend` (a call whose first
        attempt is lost in BentoML 1.4.40's batch dispatcher, about 1 in 1,000 at concurrency 32)
        or a call with a `call_id`, which the model answers from the first attempt."""
        timeouts = 0
        for attempt in range(CALL_ATTEMPTS):  # returns or raises
            try:
                return await asyncio.wait_for(call(), CAPACITY.deadline(kind, units))
            except (aiohttp.ClientConnectionError, TimeoutError) as err:
                timeouts += isinstance(err, TimeoutError)
                if attempt == CALL_ATTEMPTS - 1 or timeouts == 2 or (timeouts and not resend):
                    raise ServiceUnavailable(
                        f"the model service did not answer ({type(err).__name__})"
                    ) from None
                await asyncio.sleep(0.05 * (attempt + 1))
            except Exception as err:  # noqa: BLE001 - a failed model run: 503 for this request, the next ones go on
                raise ServiceUnavailable(
                    f"the model could not answer this request ({type(err).__name__})"
                ) from None

    async def _admit(self, kind: str, units: int):
        """Admission (`Capacity.admit`) once the model's speed is known: its first measurement,
        asked for once, replaces the prior."""
        if not self.calibrated.is_set():
            with contextlib.suppress(Exception):  # the prior stays; the calls will measure
                speed = await asyncio.wait_for(self.model.to_async.speed(), 30)
                CAPACITY.calibrate(speed["patient"], explain_units=(EXPLAIN_MAX_SENTENCES + 24) / 4)
            self.calibrated.set()
        try:
            return CAPACITY.admit(kind, units)
        except Saturated as err:
            raise ServiceUnavailable(str(err)) from None

    async def _once(self, kind: str, units: int, api, **kwargs) -> object:
        """A `call_id`-carrying call (score_many, explain): the model reports its seconds."""
        call_id = uuid.uuid4().hex
        answer = await self._call(kind, units, lambda: api(**kwargs, call_id=call_id), resend=True)
        CAPACITY.measured(kind, units, answer["seconds"])
        return answer["out"]

    @bentoml.api(route="/predict", input_spec=PredictRequest)
    async def predict(self, patient: Patient) -> Prediction:
        """Predicted outcomes under all four treatments for one patient."""
        records = await _checked([patient], batch=False)
        with await self._admit("patient", 1):
            [out] = await self._call(
                "patient", 1, lambda: self.model.to_async.score(records), resend=True
            )
        CAPACITY.measured("patient", 1, out.pop("seconds"))
        return Prediction(**out)

    @bentoml.api(route="/predict_batch", input_spec=BatchRequest)
    async def predict_batch(self, patients: list[Patient]) -> PredictionBatch:
        """Predictions for 1 to 256 patients, in their order: scored in model calls of at most
        CHUNK patients, each with its own deadline, all sent at once (the model takes its calls in
        order of arrival, so concurrent batches interleave; and every chunk is in flight when a
        SIGTERM comes, so the drain answers the whole batch)."""
        records = await _checked(patients, batch=True)
        with await self._admit("patient", len(records)):
            calls = [
                asyncio.ensure_future(
                    self._once(
                        "patient",
                        len(records[i : i + CHUNK]),
                        self.model.to_async.score_many,
                        patients=records[i : i + CHUNK],
                    )
                )
                for i in range(0, len(records), CHUNK)
            ]
            try:
                chunks = await asyncio.gather(*calls)
            finally:  # one failed: the others' answers are not needed
                for call in calls:
                    call.cancel()
        return PredictionBatch(predictions=[p for chunk in chunks for p in chunk])

    @bentoml.api(route="/explain", input_spec=PredictRequest)
    async def explain(self, patient: Patient) -> ExplainedPrediction:
        """A prediction with the effect of each modality, structured field and sentence on p_satisfied."""
        [record] = await _checked([patient], batch=False)
        with await self._admit("explain", 1):
            out = await self._once("explain", 1, self.model.to_async.explain, patient=record)
        return ExplainedPrediction(**out)


SpineCast.add_asgi_middleware(Guard)
