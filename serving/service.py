"""The SpineCast HTTP service (BentoML): CONTRACT.md section 2 over the torch-free predictor.

    bentoml serve spinecast.serving.service:SpineCast          # needs `spinecast:latest` in the model store

Two services: `SpineCast` (public: validation, auth, body limit, the routes) calls `SpineCastModel`
(the ONNX Runtime session) through `bentoml.depends`; concurrent `/predict` calls reach the model's
batchable `score` API, which BentoML's adaptive batching merges into one model run.

Configuration (environment variables):
  SPINECAST_MODEL                  model tag in the BentoML store (default spinecast:latest)
  SPINECAST_API_KEY                when set, every route but the probes and /metrics needs `Authorization: Bearer <key>`
  SPINECAST_MAX_BODY_BYTES         request body limit, 413 above it (default 1048576)
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
from pathlib import Path

import aiohttp
import bentoml
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from .predictor import BundleError, Predictor, verify_bundle
from .schemas import (
    EXAMPLE_PATIENT,
    BatchRequest,
    ExplainedPrediction,
    Patient,
    Prediction,
    PredictionBatch,
    PredictRequest,
)

MODEL_TAG = os.environ.get("SPINECAST_MODEL", "spinecast:latest")
MAX_BODY_BYTES = int(os.environ.get("SPINECAST_MAX_BODY_BYTES", "1048576"))
WORKERS = int(os.environ.get("SPINECAST_WORKERS", "1"))
ORT_THREADS = int(os.environ.get("SPINECAST_ORT_THREADS", "0")) or max(1, (os.cpu_count() or 1) // WORKERS)
BATCHING = os.environ.get("SPINECAST_BATCHING", "1") != "0"
MAX_BATCH_SIZE = int(os.environ.get("SPINECAST_MAX_BATCH_SIZE", "32"))
MAX_LATENCY_MS = int(os.environ.get("SPINECAST_MAX_LATENCY_MS", "20000"))
EXPLAIN_MAX_SENTENCES = int(os.environ.get("SPINECAST_EXPLAIN_MAX_SENTENCES", "64"))
VARIANT = os.environ.get("SPINECAST_VARIANT") or None
ORT_ARENA = os.environ.get("SPINECAST_ORT_ARENA", "0") == "1"
# A model call that has not answered after the batching bound plus 10 s is sent again (see `_call`).
CALL_TIMEOUT_S = MAX_LATENCY_MS / 1000 + 10
CALL_ATTEMPTS = 6
OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics")  # probes and scraping need no key


def _verified_bundle() -> Path:
    """The model's folder in the store, its SHA256SUMS checked. This runs when `bentoml serve` (or
    `bentoml build`) imports this module, before any worker starts: a missing or damaged bundle stops
    the command with the reason and a non-zero exit (a failing worker would be restarted forever)."""
    try:
        path = Path(bentoml.models.get(MODEL_TAG).path)
    except bentoml.exceptions.NotFound:
        raise BundleError(f"model {MODEL_TAG} is not in the BentoML model store; save one with "
                          "`spinecast export --bentoml` (or set SPINECAST_MODEL)") from None
    return verify_bundle(path)


BUNDLE = _verified_bundle()


def _records(patients: list[dict]) -> list[dict]:
    """Validated API patients -> predictor records: the base64 image becomes its bytes."""
    out = []
    for p in patients:
        image = p.get("mri_image")
        out.append({**p, "mri_image": base64.b64decode(image) if image else None})
    return out


def _checked(patients: list[Patient]) -> list[dict]:
    """Schema-valid patients (the schema is the cohort contract) as records, plus the one rule a
    per-patient schema cannot state: patient_id unique within a batch (400 naming field and rule)."""
    records = [p.model_dump() for p in patients]
    seen: set[str] = set()
    repeated = [i for i, r in enumerate(records) if r["patient_id"] in seen or seen.add(r["patient_id"])]
    if repeated:
        raise InvalidArgument("; ".join(f"patients[{i}].patient_id: must be unique in the batch" for i in repeated))
    return records


@bentoml.service(name="spinecast_model", workers=WORKERS, traffic={"timeout": 60})
class SpineCastModel:
    """The model: one verified bundle in one ONNX Runtime session per worker."""

    bundle = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        # Verified again (it may have changed since the import-time check).
        self.predictor = Predictor(self.bundle.path, VARIANT, threads=ORT_THREADS, keep_memory=ORT_ARENA)
        self.predictor.predict([EXAMPLE_PATIENT])  # warm-up: /readyz turns true only after this

    @bentoml.api(batchable=BATCHING, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def score(self, patients: list[dict]) -> list[dict]:
        """Adaptive batching merges concurrent /predict calls into one list here; two of them may
        be for the same patient, so the rows are scored under their position, not their id."""
        records = _records(patients)
        with _phi_free():
            out = self.predictor.predict([{**r, "patient_id": str(i)} for i, r in enumerate(records)], validated=True)
        return [{**o, "patient_id": r["patient_id"]} for o, r in zip(out, records)]

    @bentoml.api
    def score_many(self, patients: list[dict]) -> list[dict]:
        with _phi_free():
            return self.predictor.predict(_records(patients), validated=True)

    @bentoml.api
    def explain(self, patient: dict) -> dict:
        [record] = _records([patient])
        with _phi_free():
            return self.predictor.explain(record, max_sentences=EXPLAIN_MAX_SENTENCES, validated=True)


@contextlib.contextmanager
def _phi_free():
    """BentoML logs a failing call's exception text; ours may quote a value (a patient id in a
    contract error). Re-raise as its type name only, without the chain."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - every failure, reworded; the caller answers 503
        raise RuntimeError(f"model call failed: {type(err).__name__}") from None


def contract_error(body: bytes) -> dict:
    """BentoML's 400 bodies (pydantic's error list, or its own `[{"error": ...}]`) -> one shape, the
    declared one: {"error", "detail"} strings plus `errors`, a list of {"field", "rule"}."""
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    errors = []
    if isinstance(data, dict) and isinstance(data.get("detail"), list):  # pydantic
        for e in data["detail"]:
            field = ".".join(str(part) for part in e.get("loc", ())) or "body"
            errors.append({"field": field, "rule": e.get("msg", "invalid")})
    else:  # ours: "field: rule; field: rule"
        message = data[0].get("error", "") if isinstance(data, list) and data else str(data.get("error", ""))
        for part in filter(None, (p.strip() for p in message.split("; "))):
            field, _, rule = part.partition(": ")
            errors.append({"field": field, "rule": rule} if rule else {"field": "body", "rule": part})
    if not errors:
        errors.append({"field": "body", "rule": "must be a JSON object that follows CONTRACT.md"})
    return {"error": f"the request breaks the API contract ({len(errors)} problem(s))",
            "detail": "; ".join(f"{e['field']}: {e['rule']}" for e in errors), "errors": errors}


class Guard:
    """ASGI middleware: the bearer token (when configured), JSON bodies only (415 otherwise; BentoML
    would try multipart and pickle parsers), the request body limit, and one shape for every 400 body
    (see `contract_error`)."""

    def __init__(self, app, max_body: int = MAX_BODY_BYTES):
        self.app, self.max_body = app, max_body
        key = os.environ.get("SPINECAST_API_KEY")
        self.key = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.key and scope["path"] not in OPEN_PATHS \
                and not hmac.compare_digest(headers.get(b"authorization", b""), self.key):
            return await JSONResponse({"error": "a valid `Authorization: Bearer <key>` header is required"},
                                      status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if scope["method"] == "POST" and content_type != b"application/json":
            return await JSONResponse({"error": "Content-Type must be application/json"},
                                      status_code=415)(scope, receive, send)
        too_large = JSONResponse({"error": f"request body must be at most {self.max_body:,} bytes"}, status_code=413)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await too_large(scope, receive, send)
        body, more = b"", True
        while more:  # chunked bodies are counted as they arrive
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await too_large(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, _uniform_400(send))


def _uniform_400(send):
    """Wrap `send`: a 400 response's body is buffered and rewritten by `contract_error`."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def wrapped(message):
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] == 400:
            start = message
            return None
        if start is None:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        body = json.dumps(contract_error(b"".join(chunks))).encode()
        headers = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({**start, "headers": headers})
        return await send({"type": "http.response.body", "body": body})

    return wrapped


_card: dict = {}


async def _model_card(request):
    return JSONResponse(_card)


@bentoml.asgi_app(Starlette(routes=[Route("/model", _model_card, methods=["GET"])]), path="/")
@bentoml.service(name="spinecast", traffic={"timeout": 3 * CALL_TIMEOUT_S})
class SpineCast:
    """SpineCast: predicted 12-month outcomes of every spine treatment for one patient or many."""

    model = bentoml.depends(SpineCastModel)
    bundle = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        card = json.loads(Path(self.bundle.path, "card.json").read_text())
        _card.update(card, input_schema=Patient.model_json_schema())

    async def _call(self, api, payload):
        timeouts = 0
        for attempt in range(CALL_ATTEMPTS):  # returns or raises
            try:
                return await asyncio.wait_for(api(payload), CALL_TIMEOUT_S)
            except (aiohttp.ClientConnectionError, TimeoutError) as err:
                # Seen under load, both rare. (1) BentoML's client keeps idle connections to the model
                # service for 15 s, the model service's server closes them after 5 s: a call can take
                # a connection that is being closed (ServerDisconnectedError; bentoml/BentoML#4971),
                # and after a pause several in a row. (2) BentoML 1.4.40's batch dispatcher never
                # answers one call (about 1 in 1,000 at concurrency 32; never with batching off).
                # Scoring is idempotent: send it again (a lost call once, a closed connection up to
                # CALL_ATTEMPTS times, after a short pause).
                timeouts += isinstance(err, TimeoutError)
                if attempt == CALL_ATTEMPTS - 1 or timeouts == 2:
                    raise ServiceUnavailable(f"the model service did not answer ({type(err).__name__})") from None
                await asyncio.sleep(0.05 * (attempt + 1))
            except Exception as err:  # noqa: BLE001 - a failed model run: 503 for this request, the next ones go on
                raise ServiceUnavailable(f"the model could not answer this request ({type(err).__name__})") from None

    @bentoml.api(route="/predict", input_spec=PredictRequest)
    async def predict(self, patient: Patient) -> Prediction:
        """Predicted outcomes under all four treatments for one patient."""
        [out] = await self._call(self.model.to_async.score, _checked([patient]))
        return Prediction(**out)

    @bentoml.api(route="/predict_batch", input_spec=BatchRequest)
    async def predict_batch(self, patients: list[Patient]) -> PredictionBatch:
        """Predictions for 1 to 256 patients, in their order."""
        out = await self._call(self.model.to_async.score_many, _checked(patients))
        return PredictionBatch(predictions=out)

    @bentoml.api(route="/explain", input_spec=PredictRequest)
    async def explain(self, patient: Patient) -> ExplainedPrediction:
        """A prediction with the effect of each modality, structured field and sentence on p_satisfied."""
        [record] = _checked([patient])
        out = await self._call(self.model.to_async.explain, record)
        return ExplainedPrediction(**out)


SpineCast.add_asgi_middleware(Guard)
