"""CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/): SpineCast as a CDS Service an EHR calls.

    GET  /cds-services                              discovery: the services below
    POST /cds-services/spinecast-treatment          order-select: a spine treatment is drafted
    POST /cds-services/spinecast-treatment-review   patient-view: a spine patient's chart opens

The EHR sends the chart as prefetched FHIR R4 resources (`PREFETCH`: the templates it fills);
`datasets.fhir.read_bundle` turns them into one contract Patient, the model predicts, and `cards`
answers: the recommendation with its reason and the four treatments' predicted satisfaction with
intervals, the warnings (what the chart lacked or SpineCast could not read), a link to the
clinician page, and, where a drafted order differs from the recommendation, a suggestion to order
the recommended treatment instead. The service stays silent (no cards) where it has nothing to
say: an order-select whose selected orders are no spine treatment SpineCast knows, a patient-view
of a chart without a lumbar diagnosis or treatment order it knows.

Errors, as the spec says: 400 for a request that breaks the spec (the Guard's one shape, naming
field and rule), 401 without the API key, 412 when the chart could not be had: the Patient
neither prefetched nor read from an allowed `fhirServer` (fhir_fetch.py), or that server failing.
A chart the model cannot score (a required field missing, a value out of range) is not an error
of the request: it gets one card saying which fields and rules, never their values.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException, InvalidArgument
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from spinecast.datasets import fhir_codes as C
from spinecast.datasets.fhir import FhirError, read_bundle
from starlette.responses import JSONResponse
from starlette.routing import Route

from .fhir_route import api_patient
from .schemas import TREATMENTS, Patient

ID = "spinecast-treatment"
REVIEW_ID = "spinecast-treatment-review"
NAMES = {t: t.replace("_", " ") for t in TREATMENTS}  # "physical therapy", ...
_CHART = {
    "patient": "Patient/{{context.patientId}}",
    "encounters": "Encounter?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "medications": "MedicationStatement?patient={{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}",
    "notes": "DocumentReference?patient={{context.patientId}}",
    "reports": "DiagnosticReport?patient={{context.patientId}}",
    "media": "Media?patient={{context.patientId}}",
}
# order-select: the drafted order is the plan; patient-view: the chart's active orders are.
PREFETCH = {
    ID: _CHART,
    REVIEW_ID: {**_CHART, "orders": "ServiceRequest?patient={{context.patientId}}&status=active"},
}
HOOKS = {ID: "order-select", REVIEW_ID: "patient-view"}
_DESCRIPTION = (
    "Predicted 12-month satisfaction under physical therapy, epidural steroid injection, "
    "decompression and fusion for a lumbar spine patient, with SpineCast's recommendation"
)


def discovery() -> dict:
    """The discovery document (GET /cds-services)."""
    return {
        "services": [
            {
                "hook": HOOKS[ID],
                "id": ID,
                "title": "SpineCast: outcome of the drafted spine treatment and its alternatives",
                "description": _DESCRIPTION + ", when a spine treatment is ordered.",
                "prefetch": PREFETCH[ID],
                "usageRequirements": "Send `Authorization: Bearer <SPINECAST_API_KEY>`.",
            },
            {
                "hook": HOOKS[REVIEW_ID],
                "id": REVIEW_ID,
                "title": "SpineCast: treatment outcomes for a spine patient",
                "description": _DESCRIPTION + ", when the chart opens.",
                "prefetch": PREFETCH[REVIEW_ID],
                "usageRequirements": "Send `Authorization: Bearer <SPINECAST_API_KEY>`.",
            },
        ]
    }


_LENIENT = ConfigDict(extra="ignore")  # the spec lets clients add extensions


class FhirAuthorization(BaseModel):
    model_config = _LENIENT
    access_token: str
    token_type: str
    expires_in: int
    scope: str
    subject: str


class Context(BaseModel):
    model_config = _LENIENT
    userId: str = Field(min_length=1)
    patientId: str = Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")  # a FHIR id
    encounterId: str | None = None
    selections: list[str] | None = Field(None, max_length=256)
    draftOrders: dict[str, Any] | None = None


class HookRequest(BaseModel):
    """A CDS Hooks 2.0 request (the fields SpineCast reads; others are ignored)."""

    model_config = _LENIENT
    hook: str = Field(min_length=1, description="order-select or patient-view")
    hookInstance: str = Field(min_length=1)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: Context
    prefetch: dict[str, dict[str, Any] | None] | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _authorization_needs_server(self):
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirAuthorization needs fhirServer (cds-r-1)")
        return self


KNOWN_KEYS = {
    *HookRequest.model_fields,
    *Context.model_fields,
    *FhirAuthorization.model_fields,
}


class PreconditionFailed(BentoMLException):
    """The service could not get the FHIR data it needs (HTTP 412)."""

    error_code = HTTPStatus.PRECONDITION_FAILED


class HookError(ValueError):
    """A request that breaks the spec: `field` and `rule`, never a value."""

    def __init__(self, field: str, rule: str, status: int = 400):
        super().__init__(f"{field}: {rule}")
        self.field, self.rule, self.status = field, rule, status

    def http(self) -> BentoMLException:
        """As the exception BentoML answers with this status (400: the Guard's shape)."""
        return (PreconditionFailed if self.status == 412 else InvalidArgument)(str(self))


async def _discovery(request) -> JSONResponse:
    return JSONResponse(discovery())


def route() -> Route:
    """GET /cds-services (the hooks themselves are the public service's APIs)."""
    return Route("/cds-services", _discovery, methods=["GET"])


def _resources(value) -> list[dict]:
    """A prefetch value (a resource, a searchset Bundle or null) as resources; an OperationOutcome
    (a client's failed prefetch, or a search's outcome entry) carries no chart data."""
    if not value:
        return []
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry") or []
        found = [e.get("resource") for e in entries if isinstance(e, dict)]
    else:
        found = [value]
    return [r for r in found if isinstance(r, dict) and r.get("resourceType") != "OperationOutcome"]


def chart(service: str, request: HookRequest) -> list[dict]:
    """The FHIR resources of the patient's chart for one hook call: every prefetch key the service
    asked for (others are ignored) and, for order-select, the selected draft orders."""
    if request.hook != HOOKS[service]:
        raise HookError("hook", f"must be {HOOKS[service]} for the service {service}")
    prefetch = {k: v for k, v in (request.prefetch or {}).items() if k in PREFETCH[service]}
    if "patient" not in prefetch:
        raise HookError(
            "prefetch.patient",
            "is required: prefetch it, or name a fhirServer the service is allowed to read",
            status=412,
        )
    resources = [r for value in prefetch.values() for r in _resources(value)]
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if not any(p.get("id") == request.context.patientId for p in patients):
        raise HookError("prefetch.patient", "must be the Patient of context.patientId", status=412)
    resources = [
        r
        for r in resources
        if r.get("resourceType") != "Patient" or r.get("id") == request.context.patientId
    ]
    if service == ID:
        resources = [r for r in resources if r.get("resourceType") != "ServiceRequest"]
        resources += _drafted(request.context)
    return resources


def _drafted(context: Context) -> list[dict]:
    """The selected ServiceRequests of order-select's draftOrders (other orders are not ours)."""
    if context.selections is None or context.draftOrders is None:
        raise HookError("context", "order-select needs selections and draftOrders")
    chosen = set(context.selections)
    return [
        r
        for r in _resources(context.draftOrders)
        if r.get("resourceType") == "ServiceRequest" and f"ServiceRequest/{r.get('id')}" in chosen
    ]


def patient(resources: list[dict]) -> tuple[Patient | None, list[str], list[str]]:
    """The chart as an API Patient (the image base64), the FHIR warnings, and the contract's
    problems (fields and rules) when it cannot be scored."""
    try:
        [converted] = read_bundle(resources, source="prefetch")
    except FhirError as err:
        raise HookError("prefetch", str(err).removeprefix("prefetch: ").replace("; ", ", "))
    warnings = [str(w) for w in converted.warnings]
    record = api_patient(converted)
    try:
        return Patient.model_validate(record), warnings, []
    except ValidationError as err:
        problems = [
            f"{'.'.join(map(str, e['loc'])) or 'patient'}: {e['msg']}" for e in err.errors()
        ]
        return None, warnings, problems


def relevant(service: str, record: dict) -> bool:
    """order-select: a selected order is a spine treatment; patient-view: the chart holds a lumbar
    diagnosis or a spine treatment order SpineCast knows."""
    if service == ID:
        return record.get("treatment") is not None
    return record.get("diagnosis") is not None or record.get("treatment") is not None


def _percent(p: float | None) -> str:
    return "–" if p is None else f"{round(100 * p)} %"


def _interval(o: dict) -> str:
    low, high = o.get("p_satisfied_low"), o.get("p_satisfied_high")
    return "–" if low is None or high is None else f"{_percent(low)} to {_percent(high)}"


def _table(outcomes: list[dict]) -> str:
    rows = [
        "| Treatment | Satisfied at 12 months | Interval | ODI better by 15+ | Expected ODI |",
        "|---|---|---|---|---|",
    ]
    rows += [
        f"| {NAMES[o['treatment']]}{'' if o.get('supported', True) else ' (few similar patients)'}"
        f" | {_percent(o['p_satisfied'])} | {_interval(o)} | {_percent(o['p_mcid'])}"
        f" | {o['odi_12m']:.0f} |"
        for o in outcomes
    ]
    return "\n".join(rows)


def _source(base_url: str, version: str) -> dict:
    return {"label": f"SpineCast ({version})", "url": f"{base_url}/ui/"}


def _link(base_url: str) -> dict:
    return {
        "label": "Open SpineCast: all four treatments and what drove the prediction",
        "url": f"{base_url}/ui/",
        "type": "absolute",
    }


def cards(
    prediction: dict, fhir_warnings: list[str], base_url: str, context: Context, drafts: list[dict]
) -> list[dict]:
    """The cards for one prediction. `drafts`: the selected draft orders (order-select)."""
    by = {o["treatment"]: o for o in prediction["outcomes"]}
    best = prediction["recommended_treatment"]
    planned = prediction.get("planned_treatment")
    summary = (
        f"SpineCast recommends {NAMES[best]}: {_percent(by[best]['p_satisfied'])} predicted "
        f"satisfied at 12 months"
    )
    if planned and planned != best:
        summary = (
            f"SpineCast recommends {NAMES[best]} over the {NAMES[planned]} ordered: "
            f"{_percent(by[best]['p_satisfied'])} vs {_percent(by[planned]['p_satisfied'])} "
            "predicted satisfied"
        )
    detail = [_table(prediction["outcomes"])]
    if prediction.get("recommendation_reason"):
        detail.append(f"**Why:** {prediction['recommendation_reason'].rstrip('.')}.")
    detail.append("Intervals: the model ensemble's spread; a prediction, not a guarantee.")
    card = {
        "summary": summary[:139],  # the spec: under 140 characters
        "indicator": "warning" if planned and planned != best else "info",
        "detail": "\n\n".join(detail),
        "source": _source(base_url, prediction["model_version"]),
        "links": [_link(base_url)],
    }
    replaced = _ordering(planned, drafts)
    if replaced and planned != best:
        card["suggestions"] = [_instead(best, planned, replaced, context.patientId)]
        card["selectionBehavior"] = "at-most-one"
    out = [card]
    warnings = prediction["warnings"] + fhir_warnings
    if warnings:
        out.append(
            {
                "summary": f"SpineCast: {len(warnings)} gap(s) in what it could read of the chart",
                "indicator": "info",
                "detail": "\n".join(f"- {w}" for w in warnings),
                "source": _source(base_url, prediction["model_version"]),
            }
        )
    return out


def _ordering(treatment: str | None, drafts: list[dict]) -> list[str]:
    """The references of the draft orders whose code orders `treatment` (the plan read_bundle
    took from them), so that a suggestion replaces those and no other."""
    return [
        f"ServiceRequest/{r['id']}"
        for r in drafts
        if r.get("id")
        and any(
            C.TREATMENTS.get((c.get("system"), c.get("code"))) == treatment
            for c in (r.get("code") or {}).get("coding") or []
            if isinstance(c, dict)
        )
    ]


def _instead(best: str, planned: str, replaced: list[str], patient_id: str) -> dict:
    system, code = C.TREATMENT_CODE[best]
    deletes = [
        {"type": "delete", "description": f"Remove the {NAMES[planned]} order", "resourceId": ref}
        for ref in replaced
    ]
    return {
        "label": f"Order {NAMES[best]} instead of {NAMES[planned]}",
        "isRecommended": False,  # the clinician and patient decide
        "actions": [
            *deletes,
            {
                "type": "create",
                "description": f"Order {NAMES[best]}",
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "draft",
                    "intent": "order",
                    "code": {"coding": [{"system": system, "code": code}], "text": NAMES[best]},
                    "subject": {"reference": f"Patient/{patient_id}"},
                },
            },
        ],
    }


def unscorable(problems: list[str], base_url: str) -> list[dict]:
    """One card for a chart the model cannot score: the fields and rules, never the values."""
    return [
        {
            "summary": "SpineCast could not predict: the chart lacks what the model needs",
            "indicator": "info",
            "detail": "\n".join(f"- {p}" for p in problems),
            "source": {"label": "SpineCast", "url": f"{base_url}/ui/"},
            "links": [_link(base_url)],
        }
    ]


def drafts(service: str, resources: list[dict]) -> list[dict]:
    """The selected draft orders of an order-select chart (cds.chart keeps only those)."""
    return (
        [r for r in resources if r.get("resourceType") == "ServiceRequest"] if service == ID else []
    )
