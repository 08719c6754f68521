"""POST /fhir/patient: a FHIR R4 Bundle (or a list of resources) -> the one contract Patient it
holds, for the clinician page's "Open a FHIR bundle" (the page fills its form with the answer;
`/explain` then validates it as any patient).

    {"patient": {"patient_id": ..., "age": ..., "mri_image": "<base64>"}, "warnings": ["..."]}

The mapping is `datasets.fhir.read_bundle` (datasets/README.md "FHIR R4 in"); warnings name codes
and resources, never values. A bundle that is not valid FHIR R4, or holds no Patient or several,
gets a 400 naming `bundle` and the rule (in the Guard's one shape).
"""

from __future__ import annotations

import base64
import json

from spinecast.datasets.fhir import Converted, FhirError, read_bundle
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import Route

PATH = "/fhir/patient"


def api_patient(converted: Converted) -> dict:
    """A converted FHIR patient as the API's Patient: the values present, the image base64."""
    patient = {k: v for k, v in converted.record.items() if v is not None}
    if isinstance(patient.get("mri_image"), bytes):
        patient["mri_image"] = base64.b64encode(patient["mri_image"]).decode()
    return patient


def _refused(rule: str) -> JSONResponse:
    return JSONResponse({"error": f"bundle: {rule.replace('; ', ', ')}"}, status_code=400)


async def _patient(request) -> JSONResponse:
    try:
        data = json.loads(await request.body())
    except (ValueError, RecursionError):
        return _refused("must be valid JSON")
    try:
        found = await run_in_threadpool(read_bundle, data, source="bundle")
    except FhirError as err:
        return _refused(str(err).removeprefix("bundle: "))
    if len(found) != 1:
        return _refused(f"must hold one Patient (it holds {len(found)})")
    [converted] = found
    patient = api_patient(converted)
    return JSONResponse({"patient": patient, "warnings": [str(w) for w in converted.warnings]})


def route() -> Route:
    return Route(PATH, _patient, methods=["POST"])
