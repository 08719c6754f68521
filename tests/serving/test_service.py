"""The HTTP service, for real: `bentoml serve` in a subprocess on a tiny exported model."""

import base64
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import httpx
import pytest
from spinecast.datasets import TREATMENTS

from tools.loadtest import cohort_patients

SENTINEL = "SENTINEL-PHI-7f3a9"
OPTIONAL = ("clinical_note", "imaging_report", "mri_image")


@pytest.fixture(scope="module")
def patients(small_cohort) -> list[dict]:
    """API patients from the cohort: labels dropped, the image inlined as base64."""
    return cohort_patients(small_cohort / "cohort.parquet", 40)


def _full(patients) -> dict:
    return next(p for p in patients if all(k in p for k in OPTIONAL))


def auth(server) -> dict:
    return {"Authorization": f"Bearer {server[2]}"}


def post(server, path, body, headers=None, **kw) -> httpx.Response:
    """POST with the server's key unless `headers` says otherwise."""
    return httpx.post(
        server[0] + path,
        json=body,
        headers=auth(server) if headers is None else headers,
        timeout=60,
        **kw,
    )


def test_sync_client_calls_every_endpoint(server, patients):
    patient = _full(patients)
    with bentoml.SyncHTTPClient(server[0], token=server[2]) as client:
        prediction = client.predict(patient=patient)
        batch = client.predict_batch(patients=patients[:5])
        explained = client.explain(patient=patient)
    assert prediction["patient_id"] == patient["patient_id"]
    assert sorted(o["treatment"] for o in prediction["outcomes"]) == sorted(TREATMENTS)
    assert prediction["modalities_used"] == [
        "tabular",
        "clinical_note",
        "imaging_report",
        "mri_image",
    ]
    assert prediction["planned_treatment"] == patient["treatment"]
    assert [p["patient_id"] for p in batch["predictions"]] == [
        p["patient_id"] for p in patients[:5]
    ]
    e = explained["explanation"]
    assert set(e["modalities"]) == {"tabular", "clinical_note", "imaging_report", "mri_image"}
    assert e["treatment"] == patient["treatment"] and 0 < len(e["fields"]) <= 5
    assert e["sentences_scored"] == 12 and len(e["sentences"]) == 5
    assert all(s["text"] for s in e["sentences"])
    card = httpx.get(server[0] + "/model", headers=auth(server)).json()
    assert (
        card["version"] == prediction["model_version"]
        and "age" in card["input_schema"]["properties"]
        and card["model_card"].startswith("# SpineCast model card")
    )
    markdown = httpx.get(server[0] + "/model", headers={**auth(server), "accept": "text/markdown"})
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text == card["model_card"]  # the bundle's MODEL_CARD.md, as it was exported
    for probe in ("/readyz", "/livez", "/metrics"):
        assert (
            httpx.get(server[0] + probe).status_code == 200
        )  # no key needed for probes and metrics


@pytest.mark.parametrize(
    "absent", [c for r in range(4) for c in itertools.combinations(OPTIONAL, r)]
)
def test_every_subset_of_modalities_predicts(server, patients, absent):
    patient = {k: v for k, v in _full(patients).items() if k not in absent}
    r = post(server, "/predict", {"patient": patient})
    assert r.status_code == 200, r.text
    # sent whole with its length (the Guard), not in chunks as BentoML streams it
    assert int(r.headers["content-length"]) == len(r.content)
    assert "transfer-encoding" not in r.headers
    body = r.json()
    assert body["modalities_used"] == ["tabular"] + [m for m in OPTIONAL if m not in absent]
    assert all(any(w.startswith(f"{m} missing") for w in body["warnings"]) for m in absent)


def _bad(patient: dict, **changes) -> dict:
    return {"patient": {**patient, **changes}}


BAD = {  # name -> (body builder, field the message must name)
    "age out of range": (lambda p: _bad(p, age=7), "age"),
    "unknown category": (lambda p: _bad(p, sex="unknown"), "sex"),
    "unknown diagnosis": (lambda p: _bad(p, diagnosis="sciatica"), "diagnosis"),
    "wrong type": (lambda p: _bad(p, bmi="heavy"), "bmi"),
    "bool as string": (lambda p: _bad(p, smoking=True), "smoking"),
    "unknown field": (lambda p: _bad(p, favourite_colour="blue"), "patient.(unknown field"),
    "missing required": (lambda p: {"patient": {k: v for k, v in p.items() if k != "age"}}, "age"),
    "empty patient id": (lambda p: _bad(p, patient_id=""), "patient_id"),
    "blank patient id": (lambda p: _bad(p, patient_id="   "), "patient_id"),
    "note too long": (lambda p: _bad(p, clinical_note=SENTINEL + "x" * 20_001), "clinical_note"),
    "image not base64": (lambda p: _bad(p, mri_image="%%%not-base64%%%"), "mri_image"),
    "image not an image": (
        lambda p: _bad(p, mri_image=base64.b64encode(SENTINEL.encode() * 10).decode()),
        "mri_image",
    ),
    "unknown top-level field": (lambda p: {"patient": p, "extra": 1}, "(unknown field 2)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_contract_violations_get_400_naming_the_field(server, patients, case):
    build, field = BAD[case]
    patient = {**_full(patients), "clinical_note": f"History. {SENTINEL} reported."}
    r = post(server, "/predict", build(patient))
    assert r.status_code == 400, r.text
    body = r.json()  # one shape for every 400: error and detail strings, errors as {field, rule}
    assert isinstance(body["error"], str) and isinstance(body["detail"], str)
    assert any(field in e["field"] and e["rule"] for e in body["errors"]), body
    assert SENTINEL not in r.text
    assert (
        "favourite_colour" not in r.text and '"extra"' not in r.text
    )  # a key's name is client text


def test_batch_limits_and_duplicate_ids_get_400(server, patients):
    p = {k: v for k, v in _full(patients).items() if k != "mri_image"}
    assert post(server, "/predict_batch", {"patients": []}).status_code == 400
    too_many = [{**p, "patient_id": f"B-{i}"} for i in range(257)]
    r = post(server, "/predict_batch", {"patients": too_many})
    assert r.status_code == 400 and "patients" in r.text
    r = post(server, "/predict_batch", {"patients": [p, p]})
    assert r.status_code == 400
    assert {"field": "patients.1.patient_id", "rule": "must be unique in the batch"} in r.json()[
        "errors"
    ]


def test_nan_is_rejected(server, patients):
    body = json.dumps({"patient": {"patient_id": "N-1", "age": 50, "sex": "male"}}).replace(
        "50", "NaN"
    )
    r = httpx.post(
        server[0] + "/predict",
        content=body,
        headers={**auth(server), "Content-Type": "application/json"},
    )
    assert r.status_code == 400


def test_oversized_body_gets_413(server):
    body = {
        "patient": {"patient_id": "L-1", "age": 50, "sex": "male", "clinical_note": "x" * 1_100_000}
    }
    assert post(server, "/predict", body).status_code == 413


def test_bearer_token_is_required_when_configured(server, patients):
    body = {"patient": {"patient_id": "K-1", "age": 50, "sex": "male"}}
    assert post(server, "/predict", body, headers={}).status_code == 401
    assert (
        post(server, "/predict", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    assert httpx.get(server[0] + "/model").status_code == 401
    assert post(server, "/predict", body).status_code == 200


def test_concurrent_requests_are_answered_correctly_and_batched(server, patients):
    expected = {
        p["patient_id"]: post(server, "/predict", {"patient": p}).json() for p in patients[:24]
    }
    with ThreadPoolExecutor(24) as pool:
        answers = list(
            pool.map(lambda p: post(server, "/predict", {"patient": p}).json(), patients[:24])
        )
    for patient, answer in zip(patients[:24], answers):
        assert answer["patient_id"] == patient["patient_id"]
        for got, want in zip(answer["outcomes"], expected[patient["patient_id"]]["outcomes"]):
            assert (
                got["treatment"] == want["treatment"]
                and abs(got["p_satisfied"] - want["p_satisfied"]) < 1e-4
            )
    with ThreadPoolExecutor(4) as pool:
        batches = list(
            pool.map(
                lambda i: post(server, "/predict_batch", {"patients": patients[i : i + 10]}).json(),
                range(0, 40, 10),
            )
        )
    for i, batch in zip(range(0, 40, 10), batches):
        assert [p["patient_id"] for p in batch["predictions"]] == [
            p["patient_id"] for p in patients[i : i + 10]
        ]
    metrics = httpx.get(server[0] + "/metrics").text
    sizes = [
        line
        for line in metrics.splitlines()
        if "adaptive_batch_size_count" in line and "score" in line
    ]
    assert sizes, "the batchable score API reports its batch sizes"
    buckets = [
        line
        for line in metrics.splitlines()
        if "adaptive_batch_size_bucket" in line and 'le="1.0"' in line and "score" in line
    ]
    count = sum(float(line.rsplit(" ", 1)[1]) for line in sizes)
    ones = sum(float(line.rsplit(" ", 1)[1]) for line in buckets)
    assert ones < count, "some concurrent /predict calls were merged into one model run"


def test_patient_text_never_reaches_the_logs(server, patients):
    """Valid and invalid requests carrying a sentinel in the note: it must appear nowhere in the
    output."""
    patient = {**_full(patients), "clinical_note": f"Pain. {SENTINEL}. Worse at night."}
    assert post(server, "/predict", {"patient": patient}).status_code == 200
    assert post(server, "/explain", {"patient": patient}).status_code == 200
    for build, _ in BAD.values():
        post(server, "/predict", build(patient))
    post(server, "/predict_batch", {"patients": [patient, patient]})
    post(server, "/predict", {"patient": patient}, headers={})
    log: Path = server[1]
    text = log.read_text(errors="replace")
    assert "POST" in text or "/predict" in text  # the access log is there
    assert SENTINEL not in text
    assert "Pain." not in text and "input_value" not in text


def _bomb() -> str:
    """A PNG whose header claims 5,000 x 5,000 pixels (over the limit) in a few kilobytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


RAW = {  # name -> (raw body bytes, expected status)
    "empty body": (b"", 400),
    "invalid JSON": (b'{"patient": {"patient_id": "R-1", "age": 50,', 400),
    "JSON array": (b"[1, 2, 3]", 400),
    "Infinity": (b'{"patient": {"patient_id": "R-1", "age": Infinity, "sex": "male"}}', 400),
    "non-UTF-8 bytes": (
        (
            b'{"patient": {"patient_id": "R-1", "age": 50, "sex": "male", '
            b'"clinical_note": "\xff\xfe"}}'
        ),
        400,
    ),
}


@pytest.mark.parametrize("case", list(RAW))
def test_malformed_bodies_get_400(server, case):
    body, status = RAW[case]
    r = httpx.post(
        server[0] + "/predict",
        content=body,
        headers={**auth(server), "Content-Type": "application/json"},
    )
    assert r.status_code == status, r.text
    assert r.json()["errors"]


def test_hostile_values_are_refused_or_handled_never_500(server, patients):
    base = {k: v for k, v in _full(patients).items() if k != "mri_image"}
    bomb = post(server, "/predict", {"patient": {**base, "mri_image": _bomb()}})
    assert bomb.status_code == 400 and "pixels" in bomb.text
    control = post(
        server,
        "/predict",
        {"patient": {**base, "clinical_note": "Pain\u0000\u0007\u001b[31m at night.\r\n"}},
    )
    assert (
        control.status_code == 200
    )  # control characters are text; they are encoded, not interpreted
    empty = post(
        server, "/predict", {"patient": {**base, "clinical_note": "", "imaging_report": "   "}}
    )
    assert empty.status_code == 200
    assert {"clinical_note", "imaging_report"}.isdisjoint(empty.json()["modalities_used"])
    assert post(server, "/predict", {"patient": {**base, "sex": ""}}).status_code == 400
    assert (
        post(
            server, "/predict", {"patient": {**base, "clinical_note": "x" * 1_048_576}}
        ).status_code
        == 413
    )
    assert (
        post(
            server,
            "/predict",
            {"patient": {**base}},
            headers={**auth(server), "Content-Type": "text/plain"},
        ).status_code
        == 415
    )


def _metric(server, name: str) -> float:
    text = httpx.get(server[0] + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_patient_scored_again_is_a_sentence_cache_hit_in_metrics(server, patients):
    patient = {**_full(patients), "patient_id": "CACHE-1", "mri_image": None}
    before = _metric(server, "spinecast_sentence_cache_hits_total")
    assert post(server, "/predict", {"patient": patient}).status_code == 200
    misses = _metric(server, "spinecast_sentence_cache_misses_total")
    assert post(server, "/predict", {"patient": patient}).status_code == 200
    assert _metric(server, "spinecast_sentence_cache_hits_total") > before
    assert _metric(server, "spinecast_sentence_cache_misses_total") == misses  # nothing encoded
    assert _metric(server, "spinecast_sentence_cache_bytes") > 0
