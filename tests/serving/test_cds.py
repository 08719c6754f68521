"""CDS Hooks 2.0 on the real server: discovery, order-select and patient-view answered from
prefetched FHIR R4 charts made from the synthetic cohort, every answer validated against the spec's
JSON shapes (below, from https://cds-hooks.hl7.org/2.0/), and the spec's errors."""

import base64
import copy
import json

import httpx
import jsonschema
import pytest
from spinecast.serving import cds

from tests.serving.test_service import SENTINEL, auth, post
from tools.cds_request import hook_request
from tools.loadtest import cohort_patients

_STR = {"type": "string"}
_CODING = {"type": "object", "properties": {"system": _STR, "code": _STR, "display": _STR}}
DISCOVERY = {
    "type": "object",
    "required": ["services"],
    "properties": {
        "services": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["hook", "description", "id"],
                "properties": {
                    "hook": _STR,
                    "title": _STR,
                    "description": _STR,
                    "id": {"type": "string", "pattern": "^[A-Za-z0-9._~-]+$"},
                    "prefetch": {"type": "object", "additionalProperties": _STR},
                    "usageRequirements": _STR,
                },
            },
        }
    },
}
REQUEST = {
    "type": "object",
    "required": ["hook", "hookInstance", "context"],
    "properties": {
        "hook": _STR,
        "hookInstance": _STR,
        "fhirServer": _STR,
        "context": {"type": "object", "required": ["userId", "patientId"]},
        "prefetch": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
    },
}
_ACTION = {
    "type": "object",
    "required": ["type", "description"],
    "properties": {
        "type": {"enum": ["create", "update", "delete"]},
        "description": _STR,
        "resource": {"type": "object"},
        "resourceId": _STR,
    },
    "additionalProperties": False,
}
CARD = {
    "type": "object",
    "required": ["summary", "indicator", "source"],
    "properties": {
        "uuid": _STR,
        "summary": {"type": "string", "maxLength": 139},
        "detail": _STR,
        "indicator": {"enum": ["info", "warning", "critical"]},
        "source": {
            "type": "object",
            "required": ["label"],
            "properties": {"label": _STR, "url": _STR, "icon": _STR, "topic": _CODING},
            "additionalProperties": False,
        },
        "suggestions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["label"],
                "properties": {
                    "label": _STR,
                    "uuid": _STR,
                    "isRecommended": {"type": "boolean"},
                    "actions": {"type": "array", "items": _ACTION},
                },
                "additionalProperties": False,
            },
        },
        "selectionBehavior": {"enum": ["at-most-one", "any"]},
        "overrideReasons": {"type": "array", "items": _CODING},
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["label", "url", "type"],
                "properties": {
                    "label": _STR,
                    "url": _STR,
                    "type": {"enum": ["absolute", "smart"]},
                    "appContext": _STR,
                },
                "additionalProperties": False,
            },
        },
    },
    "dependentRequired": {"suggestions": ["selectionBehavior"]},
    "additionalProperties": False,
}
RESPONSE = {
    "type": "object",
    "required": ["cards"],
    "properties": {"cards": {"type": "array", "items": CARD}, "systemActions": {"type": "array"}},
}


def _valid(schema: dict, body: dict) -> dict:
    jsonschema.Draft202012Validator(schema).validate(body)
    return body


@pytest.fixture(scope="module")
def patient(small_cohort) -> dict:
    """A cohort patient with every modality (and so a note, a report and an image)."""
    found = cohort_patients(small_cohort / "cohort.parquet", 40)
    return next(
        p for p in found if all(k in p for k in ("clinical_note", "mri_image", "diagnosis"))
    )


def _hook(server, body, service=cds.ID, **kw) -> httpx.Response:
    return post(server, f"/cds-services/{service}", _valid(REQUEST, body), **kw)


def test_discovery_lists_both_hooks_with_their_prefetch(server):
    r = httpx.get(server[0] + "/cds-services", headers=auth(server))
    assert r.status_code == 200
    services = {s["id"]: s for s in _valid(DISCOVERY, r.json())["services"]}
    assert {s: services[s]["hook"] for s in services} == {
        cds.ID: "order-select",
        cds.REVIEW_ID: "patient-view",
    }
    assert services[cds.ID]["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert "orders" in services[cds.REVIEW_ID]["prefetch"]  # the chart's order is its plan
    assert httpx.get(server[0] + "/cds-services").status_code == 401  # the same key as the API


def _predict(server, patient) -> dict:
    r = post(server, "/predict", {"patient": patient})
    assert r.status_code == 200, r.text
    return r.json()


def test_order_select_cards_match_predict_and_suggest_the_recommendation(server, patient):
    expected = _predict(server, patient)
    best = expected["recommended_treatment"]
    other = next(t for t in cds.NAMES if t != best)
    drafted = {**patient, "treatment": other}  # an order that is not the recommendation
    expected = _predict(server, drafted)
    r = _hook(server, hook_request(drafted, cds.ID))
    assert r.status_code == 200, r.text
    card, *gaps = _valid(RESPONSE, r.json())["cards"]
    # the chart read without a FHIR warning: the gaps are /predict's own (fields the row lacks)
    assert [g["detail"] for g in gaps] == (
        ["\n".join(f"- {w}" for w in expected["warnings"])] if expected["warnings"] else []
    )
    assert card["indicator"] == "warning"
    assert cds.NAMES[best] in card["summary"] and cds.NAMES[other] in card["summary"]
    for o in expected["outcomes"]:  # the FHIR chart predicts what the contract row does
        row = next(
            line
            for line in card["detail"].splitlines()
            if line.startswith(f"| {cds.NAMES[o['treatment']]}")
        )
        assert f"| {round(100 * o['p_satisfied'])} % |" in row
    assert card["links"][0]["url"] == server[0] + "/ui/"
    [suggestion] = card["suggestions"]
    delete, create = suggestion["actions"]
    drafted_id = hook_request(drafted, cds.ID)["context"]["selections"][0]
    assert delete == {**delete, "type": "delete", "resourceId": drafted_id}
    assert create["resource"]["resourceType"] == "ServiceRequest"
    assert create["resource"]["code"]["text"] == cds.NAMES[best]


def test_of_two_selected_orders_the_suggestion_replaces_the_plan_only(server, patient):
    best = _predict(server, patient)["recommended_treatment"]
    other, third = [t for t in cds.NAMES if t != best][:2]
    body = hook_request({**patient, "treatment": other}, cds.ID)
    [plan] = [e["resource"] for e in body["context"]["draftOrders"]["entry"]]
    system, code = cds.C.TREATMENT_CODE[third]
    earlier = {**copy.deepcopy(plan), "id": "earlier-order"}
    earlier["code"] = {"coding": [{"system": system, "code": code}]}
    body["context"]["draftOrders"]["entry"].insert(0, {"resource": earlier})
    body["context"]["selections"].insert(0, "ServiceRequest/earlier-order")
    r = _hook(server, body)  # the plan: the later order (read_bundle), as /predict is told
    card = _valid(RESPONSE, r.json())["cards"][0]
    assert cds.NAMES[other] in card["summary"], card["summary"]
    [suggestion] = card["suggestions"]
    deleted = [a["resourceId"] for a in suggestion["actions"] if a["type"] == "delete"]
    assert deleted == [f"ServiceRequest/{plan['id']}"]


def test_patient_view_answers_one_info_card_and_the_agreeing_order_no_suggestion(server, patient):
    best = _predict(server, patient)["recommended_treatment"]
    for service in (cds.REVIEW_ID, cds.ID):
        r = _hook(server, hook_request({**patient, "treatment": best}, service), service)
        card, *_ = _valid(RESPONSE, r.json())["cards"]
        assert card["indicator"] == "info" and "suggestions" not in card
        assert card["summary"].startswith(f"SpineCast recommends {cds.NAMES[best]}")


def test_unknown_codes_and_missing_resources_predict_with_warnings(server, patient):
    body = hook_request({**patient, "clinical_note": SENTINEL + " " + patient["clinical_note"]})
    body["prefetch"]["reports"] = None  # the client had no report (spec: null)
    del body["prefetch"]["media"]  # ...and could not prefetch the image (spec: key left out)
    observations = body["prefetch"]["observations"]["entry"]
    observations[0]["resource"]["code"]["coding"] = [
        {"system": "http://loinc.org", "code": "0000-0"}
    ]
    r = _hook(server, body)
    assert r.status_code == 200, r.text
    _, gaps = _valid(RESPONSE, r.json())["cards"]
    assert "Observation: unknown code http://loinc.org|0000-0" in gaps["detail"]
    assert "imaging_report" in gaps["detail"] and "mri_image" in gaps["detail"]
    assert SENTINEL not in r.text and SENTINEL not in server[1].read_text()


def test_silent_where_it_has_nothing_to_say(server, patient):
    body = hook_request(patient, cds.ID)
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["code"]["coding"] = [{"system": "http://snomed.info/sct", "code": "73761001"}]  # not ours
    assert _valid(RESPONSE, _hook(server, body).json()) == {"cards": []}


def test_a_chart_the_model_cannot_score_gets_a_card_naming_fields(server, patient):
    body = hook_request(patient, cds.ID)
    del body["prefetch"]["patient"]["birthDate"]
    [card] = _valid(RESPONSE, _hook(server, body).json())["cards"]
    assert "age" in card["detail"] and "could not predict" in card["summary"]


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        (lambda b: b.update(hook="patient-view"), 400, "hook"),
        (lambda b: b["context"].pop("patientId"), 400, "context.patientId"),
        (lambda b: b["context"].update(patientId="../admin"), 400, "context.patientId"),
        (lambda b: b["context"].pop("draftOrders"), 400, "context"),
        (
            lambda b: b.update(
                fhirAuthorization={
                    "access_token": "x",
                    "token_type": "Bearer",
                    "expires_in": 1,
                    "scope": "s",
                    "subject": "c",
                }
            ),
            400,
            "body",
        ),
        (
            lambda b: b["prefetch"]["conditions"]["entry"][0]["resource"].update(
                onsetDateTime="soon"
            ),
            400,
            "prefetch",
        ),
        (lambda b: b["prefetch"].pop("patient"), 412, None),
        (lambda b: b["context"].update(patientId="someone-else"), 412, None),
    ],
)
def test_spec_errors_name_field_and_rule(server, patient, change, status, field):
    body = copy.deepcopy(hook_request(patient, cds.ID))
    change(body)
    r = post(server, f"/cds-services/{cds.ID}", body)
    assert r.status_code == status, r.text
    if field is not None:
        assert field in [e["field"] for e in r.json()["errors"]], r.text
    assert "prefetch.patient" in r.text if status == 412 else True


def test_unknown_service_and_missing_key(server, patient):
    body = hook_request(patient, cds.ID)
    assert post(server, "/cds-services/nope", body).status_code == 404
    assert post(server, f"/cds-services/{cds.ID}", body, headers={}).status_code == 401


def test_fhir_patient_route_gives_the_contract_patient_the_page_opens(server, patient):
    from spinecast.datasets.fhir import to_bundle

    record = {**patient, "mri_image": base64.b64decode(patient["mri_image"])}
    r = post(server, "/fhir/patient", to_bundle(record))
    assert r.status_code == 200, r.text
    assert r.json() == {"patient": patient, "warnings": []}  # the image comes back as base64
    bad = post(server, "/fhir/patient", {"resourceType": "Bundle", "type": "collection"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "bundle"
    assert "Patient" in bad.json()["errors"][0]["rule"]
    assert post(server, "/fhir/patient", to_bundle(record), headers={}).status_code == 401


TOKEN = "tok-SECRET-4d1c"  # the EHR's access token: sent to its FHIR server, never logged
_AUTHORIZATION = {
    "access_token": TOKEN,
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "patient/*.read",
    "subject": "spinecast",
}


def _answer(value: dict, status: int = 200, **headers) -> tuple:
    return status, headers, json.dumps(value).encode()


def _serve_chart(stub, body: dict, keys: list[str]) -> dict:
    """Moves `keys` of the request's prefetch onto the stub FHIR server, the observations search
    in two pages (its second page's `next` lies on another server); the paths it serves."""
    stub.answers.clear()
    stub.seen.clear()
    pid = body["context"]["patientId"]
    paths = {}
    for key in keys:
        template = cds.PREFETCH[cds.ID][key].replace("{{context.patientId}}", pid)
        paths[key] = f"/fhir/{template}"
        value = body["prefetch"].pop(key)
        if key == "observations":
            entries, page2 = value["entry"], f"/fhir/{template}&page=2"
            stub.answers[page2] = _answer(
                {**value, "entry": entries[1:], "link": [{"relation": "next", "url": "http://x/"}]}
            )
            link = [{"relation": "next", "url": stub.base + page2}]
            value = {**value, "entry": entries[:1], "link": link}
            paths["observations, page 2"] = page2
        stub.answers[paths[key]] = _answer(value)
    body.update(fhirServer=f"{stub.base}/fhir/", fhirAuthorization=_AUTHORIZATION)
    return paths


def test_the_chart_not_prefetched_is_read_from_the_allowed_fhir_server(server, patient, fhir_stub):
    full = hook_request(patient, cds.ID)
    body = copy.deepcopy(full)
    paths = _serve_chart(fhir_stub, body, ["patient", "observations", "notes"])
    body["prefetch"]["reports"] = None  # null: the EHR has none, so it is not asked for
    r = _hook(server, body)
    assert r.status_code == 200, r.text
    assert sorted(fhir_stub.seen) == sorted((p, f"Bearer {TOKEN}") for p in paths.values())
    full["prefetch"]["reports"] = None
    assert r.json() == _hook(server, full).json()  # the same chart, the same cards
    assert TOKEN not in server[1].read_text()


@pytest.mark.parametrize(
    ("server_path", "answer", "field"),
    [
        ("/elsewhere", None, "prefetch.patient"),  # not the allowed base: never fetched
        ("/fhir", _answer({}, 302, Location="/fhir/moved"), "prefetch.patient"),  # not followed
        ("/fhir", _answer({}, 500), "prefetch.patient"),
        ("/fhir", (200, {}, b"not json"), "prefetch.patient"),
        ("/fhir", (200, {}, b" " * (17 << 20)), "prefetch.patient"),  # over the body limit
    ],
)
def test_a_fhir_server_not_allowed_or_failing_is_412(
    server, patient, fhir_stub, server_path, answer, field
):
    body = hook_request(patient, cds.ID)
    [path] = _serve_chart(fhir_stub, body, ["patient"]).values()
    body["fhirServer"] = fhir_stub.base + server_path
    if answer is not None:
        fhir_stub.answers["/fhir/moved"] = fhir_stub.answers[path]  # where a redirect would go
        fhir_stub.answers[path] = answer
    r = post(server, f"/cds-services/{cds.ID}", body)
    assert r.status_code == 412, r.text
    assert field in r.text and TOKEN not in r.text
    assert [p for p, _ in fhir_stub.seen] == ([] if answer is None else [path])
