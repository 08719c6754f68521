"""The SpineCast HTTP service (BentoML): CONTRACT.md section 2 over the torch-free predictor.

    # needs `spinecast:latest` in the model store
    bentoml serve spinecast.serving.service:SpineCast

Two services: `SpineCast` (public: validation, auth, limits, admission, the routes) calls
`SpineCastModel` (the ONNX Runtime session) through `bentoml.depends`; concurrent `/predict` calls
reach the model's batchable `score` API, which BentoML's adaptive batching merges into one model
run; `/predict_batch` is scored in chunks. With `SPINECAST_INLINE_MODEL=1` the model runs in the
public service's process instead (its calls in threads): one HTTP hop, no adaptive batching.
`edge.py` guards the connections (see SECURITY.md for every protection and its limit).

Configuration: the `SPINECAST_*` environment variables of `settings.py`, read once at import.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from bentoml.validators import ContentType
from spinecast.datasets.ids import UniqueIds
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from . import bundle as bundle_format
from . import cds, edge, fhir_fetch, fhir_route, page
from .bundle import BundleError
from .capacity import Capacity, Once, Saturated
from .guard import Guard
from .predictor import Predictor
from .resend import Resend
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
from .settings import load

SETTINGS = load()
# a request's sentences tokenize faster on its thread than on the tokenizer's pool (README "Export")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
CACHE_HITS = bentoml.metrics.Counter(
    name="spinecast_sentence_cache_hits", documentation="sentences found in the embedding cache"
)
CACHE_MISSES = bentoml.metrics.Counter(
    name="spinecast_sentence_cache_misses", documentation="sentences the model had to encode"
)
CACHE_BYTES = bentoml.metrics.Gauge(
    name="spinecast_sentence_cache_bytes",
    documentation="memory the embedding cache holds (per model worker, summed)",
    multiprocess_mode="livesum",
)
# The model worker's answers. A type without a media type makes BentoML build its JSON schema on
# every response to find one: more of the worker's time than the model at batch 1 (py-spy).
JSONList = Annotated[list[dict], ContentType("application/json")]
JSONDict = Annotated[dict, ContentType("application/json")]
# else max_body_bytes; a hook's prefetch carries the chart, the note, the report and the image
BODY_LIMITS = {
    "/predict_batch": SETTINGS.max_batch_body_bytes,
    **{f"/cds-services/{s}": SETTINGS.max_batch_body_bytes for s in cds.HOOKS},
    fhir_route.PATH: SETTINGS.max_batch_body_bytes,
}
RESEND = Resend()

edge.install(SETTINGS.max_connections, SETTINGS.header_timeout_s)
# One /explain scores one variant per sentence and field (batched): its prior is a quarter of that
# in patients.
EXPLAIN_UNITS = (SETTINGS.explain_max_sentences + 24) / 4
CAPACITY = Capacity(
    SETTINGS.max_queue_s,
    SETTINGS.seconds_per_patient,
    explain_units=EXPLAIN_UNITS,
    workers=SETTINGS.workers,
)
IMAGES = ThreadPoolExecutor(2, thread_name_prefix="spinecast-images")  # decoding, off the loop


def _verified_bundle() -> Path:
    """The model's folder in the store, its SHA256SUMS checked. This runs when `bentoml serve` (or
    `bentoml build`) imports this module, before any worker starts: a missing or damaged bundle
    stops the command with the reason and a non-zero exit (a failing worker would be restarted
    forever)."""
    try:
        path = Path(bentoml.models.get(SETTINGS.model).path)
    except bentoml.exceptions.NotFound:
        raise BundleError(
            f"model {SETTINGS.model} is not in the BentoML model store; save one with "
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
            IMAGES, check_images, records, SETTINGS.max_request_pixels
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


@bentoml.service(name="spinecast_model", workers=SETTINGS.workers, traffic={"timeout": 600})
class SpineCastModel:
    """The model: one verified bundle in one ONNX Runtime session per worker. Every API reports the
    seconds its model run took, which the public service's `Capacity` learns the model's speed
    from."""

    bundle = bentoml.models.BentoModel(SETTINGS.model)

    def __init__(self) -> None:
        # Verified again (it may have changed since the import-time check).
        self.predictor = Predictor(
            self.bundle.path,
            SETTINGS.variant,
            threads=SETTINGS.threads(),
            keep_memory=SETTINGS.ort_arena,
            cache_mib=SETTINGS.sentence_cache_mib,
        )
        self.predictor.predict([EXAMPLE_PATIENT])  # warm-up: /readyz turns true only after this
        start = time.perf_counter()
        self.predictor.predict([{**EXAMPLE_PATIENT, "patient_id": str(i)} for i in range(8)])
        self.seconds_per_patient = (time.perf_counter() - start) / 8
        self.once = Once()

    @bentoml.api
    def speed(self) -> JSONDict:
        """Seconds per patient measured at start-up (the public service's first estimate)."""
        return {"patient": self.seconds_per_patient}

    @bentoml.api(
        batchable=SETTINGS.batching,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def score(self, patients: list[dict]) -> JSONList:
        """Adaptive batching merges concurrent /predict calls into one list here; two of them may
        be for the same patient, so the rows are scored under their position, not their id."""
        records = _records(patients)
        start = time.perf_counter()
        with _phi_free():
            out = self.predictor.predict(
                [{**r, "patient_id": str(i)} for i, r in enumerate(records)], validated=True
            )
        seconds = (time.perf_counter() - start) / max(1, len(records))
        self._count_cache()
        return [
            {**o, "patient_id": r["patient_id"], "seconds": seconds} for o, r in zip(out, records)
        ]

    @bentoml.api
    def score_many(self, patients: list[dict], call_id: str = "") -> JSONDict:
        return self.once(
            call_id, lambda: self._timed(self.predictor.predict, _records(patients), validated=True)
        )

    @bentoml.api
    def explain(self, patient: dict, call_id: str = "") -> JSONDict:
        [record] = _records([patient])
        return self.once(
            call_id,
            lambda: self._timed(
                self.predictor.explain,
                record,
                max_sentences=SETTINGS.explain_max_sentences,
                validated=True,
            ),
        )

    def _timed(self, run, *args, **kwargs) -> dict:
        start = time.perf_counter()
        with _phi_free():
            out = run(*args, **kwargs)
        self._count_cache()
        return {"out": out, "seconds": time.perf_counter() - start}

    def _count_cache(self) -> None:
        """The sentence cache's new hits and misses, and its size, into /metrics."""
        hits, misses = self.predictor.cache.take_counts()
        CACHE_HITS.inc(hits)
        CACHE_MISSES.inc(misses)
        CACHE_BYTES.set(self.predictor.cache.bytes)


@contextlib.contextmanager
def _phi_free():
    """BentoML logs a failing call's exception text; ours may quote a value (a patient id in a
    contract error). Re-raise as its type name only, without the chain."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - every failure, reworded; the caller answers 503
        raise RuntimeError(f"model call failed: {type(err).__name__}") from None


_card: dict = {}


async def _model_card(request):
    """The card as JSON; with `Accept: text/markdown`, the TRIPOD+AI MODEL_CARD.md the bundle
    carries (404 when it carries none)."""
    if "text/markdown" in request.headers.get("accept", ""):
        text = _card.get("model_card")
        if text is None:
            return JSONResponse({"error": "this bundle carries no MODEL_CARD.md"}, 404)
        return PlainTextResponse(text, media_type="text/markdown")
    return JSONResponse(_card)


@bentoml.asgi_app(
    Starlette(
        routes=[
            Route("/model", _model_card, methods=["GET"]),
            cds.route(),
            fhir_route.route(),
            *page.routes(),
        ]
    ),
    path="/",
)
@bentoml.service(name="spinecast", traffic={"timeout": 3600})  # each model call has a deadline
class SpineCast:
    """SpineCast: predicted 12-month outcomes of every spine treatment for one patient or many."""

    if not SETTINGS.inline_model:
        model = bentoml.depends(SpineCastModel)
    bundle = bentoml.models.BentoModel(SETTINGS.model)

    def __init__(self) -> None:
        if SETTINGS.inline_model:  # the same APIs (`to_async`), called in this process
            self.model = SpineCastModel()
        card = bundle_format.read(self.bundle.path).model_dump(mode="json")
        _card.update(
            card,
            input_schema=Patient.model_json_schema(),
            model_card=bundle_format.model_card(self.bundle.path),
        )
        self.calibrated = asyncio.Event()

    async def _call(self, kind: str, units: int, call, resend: bool = False):
        """One model call within its deadline, sent again where `RESEND` says it is safe
        (`resend`: the call cannot duplicate running work; see resend.py)."""
        return await RESEND.call(call, CAPACITY.deadline(kind, units), idempotent=resend)

    async def _admit(self, kind: str, units: int):
        """Admission (`Capacity.admit`) once the model's speed is known: its first measurement,
        asked for once, replaces the prior."""
        if not self.calibrated.is_set():
            with contextlib.suppress(Exception):  # the prior stays; the calls will measure
                speed = await asyncio.wait_for(self.model.to_async.speed(), 30)
                CAPACITY.calibrate(speed["patient"], explain_units=EXPLAIN_UNITS)
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

    async def _score(self, patient: Patient) -> dict:
        """One patient through the batchable `score` (what /predict and the hooks answer from)."""
        records = await _checked([patient], batch=False)
        with await self._admit("patient", 1):
            [out] = await self._call(
                "patient", 1, lambda: self.model.to_async.score(records), resend=True
            )
        CAPACITY.measured("patient", 1, out.pop("seconds"))
        return out

    @bentoml.api(route="/predict", input_spec=PredictRequest)
    async def predict(self, patient: Patient) -> Prediction:
        """Predicted outcomes under all four treatments for one patient."""
        return Prediction(**await self._score(patient))

    async def _hook(self, service: str, request: cds.HookRequest, ctx: bentoml.Context) -> dict:
        """A CDS Hooks call (cds.py): the prefetched chart -> one Patient -> cards."""
        try:
            request = await fhir_fetch.complete(service, request, SETTINGS)
            resources = cds.chart(service, request)
            found, fhir_warnings, problems = await asyncio.get_running_loop().run_in_executor(
                IMAGES, cds.patient, resources
            )
        except cds.HookError as err:
            raise err.http() from None
        base = SETTINGS.public_url or str(ctx.request.base_url).rstrip("/")
        if found is None:
            return {"cards": cds.unscorable(problems, base)}
        if not cds.relevant(service, found.model_dump(include={"treatment", "diagnosis"})):
            return {"cards": []}
        out = Prediction(**await self._score(found)).model_dump(mode="json")
        drafts = cds.drafts(service, resources)
        return {"cards": cds.cards(out, fhir_warnings, base, request.context, drafts)}

    @bentoml.api(route=f"/cds-services/{cds.ID}", input_spec=cds.HookRequest)
    async def cds_order_select(self, ctx: bentoml.Context, **request) -> JSONDict:
        """CDS Hooks order-select: the drafted spine treatment and its alternatives, as cards."""
        return await self._hook(cds.ID, cds.HookRequest.model_construct(**request), ctx)

    @bentoml.api(route=f"/cds-services/{cds.REVIEW_ID}", input_spec=cds.HookRequest)
    async def cds_patient_view(self, ctx: bentoml.Context, **request) -> JSONDict:
        """CDS Hooks patient-view: the four treatments' outcomes for a spine patient, as cards."""
        return await self._hook(cds.REVIEW_ID, cds.HookRequest.model_construct(**request), ctx)

    @bentoml.api(route="/predict_batch", input_spec=BatchRequest)
    async def predict_batch(self, patients: list[Patient]) -> PredictionBatch:
        """Predictions for 1 to 256 patients, in their order: scored in model calls of at most
        `SPINECAST_CHUNK_PATIENTS` patients, each with its own deadline, all sent at once (the
        model takes its calls in order of arrival, so concurrent batches interleave; and every
        chunk is in flight when a SIGTERM comes, so the drain answers the whole batch)."""
        records = await _checked(patients, batch=True)
        with await self._admit("patient", len(records)):
            calls = [
                asyncio.ensure_future(
                    self._once(
                        "patient",
                        len(records[i : i + SETTINGS.chunk_patients]),
                        self.model.to_async.score_many,
                        patients=records[i : i + SETTINGS.chunk_patients],
                    )
                )
                for i in range(0, len(records), SETTINGS.chunk_patients)
            ]
            try:
                chunks = await asyncio.gather(*calls)
            finally:  # one failed: the others' answers are not needed
                for call in calls:
                    call.cancel()
        return PredictionBatch(predictions=[p for chunk in chunks for p in chunk])

    @bentoml.api(route="/explain", input_spec=PredictRequest)
    async def explain(self, patient: Patient) -> ExplainedPrediction:
        """A prediction with the effect of each modality, structured field and sentence on
        p_satisfied."""
        [record] = await _checked([patient], batch=False)
        with await self._admit("explain", 1):
            out = await self._once("explain", 1, self.model.to_async.explain, patient=record)
        return ExplainedPrediction(**out)


SpineCast.add_asgi_middleware(
    Guard,
    api_key=SETTINGS.api_key,
    max_body_bytes=SETTINGS.max_body_bytes,
    limits=BODY_LIMITS,
    body_timeout_s=SETTINGS.body_timeout_s,
    retry_after=CAPACITY.retry_after,
)
