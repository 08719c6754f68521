"""A CDS Hooks request for one contract patient, shaped as an EHR sends it: the chart as
prefetched FHIR R4 resources with server ids and relative references (`Patient/P-1`), searchset
Bundles per prefetch key, the image inline in its Media. What `make demo` and the tests call the
service with.

    from tools.cds_request import hook_request
    body = hook_request(api_patient, "spinecast-treatment")   # order-select, its treatment drafted
"""

from __future__ import annotations

import base64
import uuid

from spinecast.datasets.fhir import to_bundle
from spinecast.serving import cds

_KEYS = {
    "Patient": "patient",
    "Encounter": "encounters",
    "Observation": "observations",
    "Condition": "conditions",
    "MedicationStatement": "medications",
    "Procedure": "procedures",
    "DocumentReference": "notes",
    "DiagnosticReport": "reports",
    "Media": "media",
    "ServiceRequest": "orders",
}


def resources(patient: dict) -> list[dict]:
    """An API patient (the image base64) -> its chart as a FHIR server holds it."""
    record = dict(patient)
    if record.get("mri_image"):
        record["mri_image"] = base64.b64decode(record["mri_image"])
    entries = to_bundle(record)["entry"]
    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['fullUrl'][-12:]}" for e in entries}
    patient_ref = next(
        ids[e["fullUrl"]] for e in entries if e["resource"]["resourceType"] == "Patient"
    )
    binaries = {
        e["fullUrl"]: e["resource"] for e in entries if e["resource"]["resourceType"] == "Binary"
    }
    out = []
    for e in entries:
        res = _relative(e["resource"], ids)
        kind = res["resourceType"]
        if kind == "Binary":
            continue
        res.setdefault("id", ids[e["fullUrl"]].split("/")[1])
        if kind == "Patient":
            patient_ref = f"Patient/{res['id']}"
        if kind == "Media" and res["content"].get("url") in ids.values():
            binary = binaries[next(u for u, r in ids.items() if r == res["content"]["url"])]
            res["content"] = {"contentType": binary["contentType"], "data": binary["data"]}
        out.append(res)
    for res in out:
        if "subject" in res:
            res["subject"] = {"reference": patient_ref}
    return out


def _relative(node, ids: dict):
    if isinstance(node, dict):
        return {
            k: (
                ids.get(v, v)
                if k in ("reference", "url") and isinstance(v, str)
                else _relative(v, ids)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_relative(v, ids) for v in node]
    return node


def hook_request(patient: dict, service: str = cds.ID) -> dict:
    """The CDS Hooks request for `patient`: order-select drafts its `treatment` (a ServiceRequest
    in draftOrders, selected); patient-view prefetches it as an active order."""
    chart = resources(patient)
    [person] = [r for r in chart if r["resourceType"] == "Patient"]
    prefetch: dict = {key: None for key in cds.PREFETCH[service]}
    orders = []
    for res in chart:
        key = _KEYS[res["resourceType"]]
        if key == "patient":
            prefetch[key] = res
        elif key == "orders" and service == cds.ID:
            orders.append({**res, "status": "draft"})
        elif key in prefetch:
            bundle = prefetch[key] or {"resourceType": "Bundle", "type": "searchset", "entry": []}
            bundle["entry"].append({"resource": res})
            prefetch[key] = bundle
    context = {"userId": "Practitioner/example", "patientId": person["id"]}
    if service == cds.ID:
        context["selections"] = [f"ServiceRequest/{o['id']}" for o in orders]
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": o} for o in orders],
        }
    return {
        "hook": cds.HOOKS[service],
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": prefetch,
    }
