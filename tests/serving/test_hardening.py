"""What a hostile or careless client sends, against a real `bentoml serve` with short limits: slow
clients (raw sockets: an HTTP client would hide the problem), strict types, what reaches the logs
and /metrics, error bodies, duplicate credentials, saturation and chunked batches."""

import base64
import io
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image, PngImagePlugin

from tools.demo import free_port, running_server

KEY = "hardening-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {
    "SPINECAST_HEADER_TIMEOUT_S": "1.5",
    "SPINECAST_BODY_TIMEOUT_S": "1.5",
    "SPINECAST_MAX_CONNECTIONS": "40",
    "SPINECAST_MAX_QUEUE_S": "1",
    "SPINECAST_CHUNK_PATIENTS": "8",
    "SPINECAST_API_KEY": KEY,
}
PATIENT = {
    "patient_id": "H-1",
    "age": 58,
    "sex": "female",
    "asa_class": 2,
    "diabetes": False,
    "clinical_note": "Left leg pain for 10 weeks. SLR positive on the left.",
}


@pytest.fixture(scope="module")
def hard(bentoml_home, tmp_path_factory):
    """(base URL, port, log file) of a server with short deadlines and small caps."""
    log = tmp_path_factory.mktemp("hardening") / "server.log"
    port = free_port()
    with running_server(port, {"BENTOML_HOME": str(bentoml_home), **LIMITS}, log=log):
        yield f"http://127.0.0.1:{port}", port, log


def post(hard, path, body, headers=AUTH, **kw) -> httpx.Response:
    return httpx.post(hard[0] + path, json=body, headers=headers, timeout=60, **kw)


def raw(port: int, data: bytes, wait: float = 10) -> tuple[bytes, float]:
    """Send `data` on a fresh socket, read until the server closes it (or `wait` runs out)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.settimeout(wait)
        start, chunks = time.monotonic(), []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks), time.monotonic() - start


# --- slow clients ---------------------------------------------------------------------------


def test_headers_that_never_finish_get_408_and_the_connection_is_closed(hard):
    answer, seconds = raw(hard[1], b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
    assert answer.startswith(b"HTTP/1.1 408") and seconds < 5  # the header deadline is 1.5 s


def test_a_body_that_never_comes_gets_408(hard):
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 400\r\n\r\n"
    )
    answer, seconds = raw(hard[1], head + b'{"patient": {')  # promises 400 bytes, sends 13
    assert answer.startswith(b"HTTP/1.1 408") and b"within 1.5 s" in answer and seconds < 5


def test_a_kept_alive_connection_gets_the_header_deadline_again(hard):
    with socket.create_connection(("127.0.0.1", hard[1])) as s:
        s.settimeout(5)
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first:
            first += s.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
        while len(body) < length:
            body += s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /livez HTTP/1.1\r\nHo")  # the second request stalls in its headers
        assert s.recv(65536).startswith(b"HTTP/1.1 408")


def test_connections_over_the_cap_get_503_with_retry_after(hard):
    sockets = [socket.create_connection(("127.0.0.1", hard[1])) for _ in range(40)]
    try:
        answer, _ = raw(hard[1], b"", wait=3)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
    finally:
        for s in sockets:
            s.close()
    time.sleep(0.2)
    assert httpx.get(hard[0] + "/livez").status_code == 200


# --- strict types -----------------------------------------------------------------------------

STRICT = {  # change -> field named in the 400
    "integer as string": ({"asa_class": "3"}, "patient.asa_class"),
    "integer as padded string": ({"age": " 47 "}, "patient.age"),
    "integer with underscore": ({"age": "4_7"}, "patient.age"),  # int("4_7") is 47
    "integer as boolean": ({"back_pain_nrs": True}, "patient.back_pain_nrs"),
    "fractional integer": ({"asa_class": 2.5}, "patient.asa_class"),
    "boolean as number": ({"diabetes": 1}, "patient.diabetes"),
    "boolean as string": ({"diabetes": "true"}, "patient.diabetes"),
    "number as string": ({"bmi": "27.5"}, "patient.bmi"),
    "NUL in patient_id": ({"patient_id": "H-\x001"}, "patient.patient_id"),
    "ESC in patient_id": ({"patient_id": "H-\x1b[31m"}, "patient.patient_id"),
    "newline in patient_id": ({"patient_id": "H-1\r\nforged"}, "patient.patient_id"),
}


@pytest.mark.parametrize("case", list(STRICT))
def test_types_are_json_types_strictly(hard, case):
    change, field = STRICT[case]
    r = post(hard, "/predict", {"patient": {**PATIENT, **change}})
    assert r.status_code == 400, r.text
    assert field in [e["field"] for e in r.json()["errors"]]


def test_an_integral_float_is_an_integer(hard):
    assert (
        post(hard, "/predict", {"patient": {**PATIENT, "asa_class": 3.0, "age": 58.0}}).status_code
        == 200
    )


# --- error bodies -----------------------------------------------------------------------------


def _raw_post(hard, text: str) -> httpx.Response:
    return httpx.post(
        hard[0] + "/predict",
        content=text.encode(),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=60,
    )


def test_a_huge_integer_and_a_lone_surrogate_name_their_field(hard):
    huge = _raw_post(
        hard, '{"patient": {"patient_id": "H-2", "age": 1%s, "sex": "male"}}' % ("0" * 5000)
    )
    assert huge.status_code == 400 and huge.json()["errors"][0]["field"] == "patient.age", huge.text
    surrogate = _raw_post(
        hard,
        '{"patient": {"patient_id": "H-2", "age": 50, "sex": "male", "clinical_note": "a\\ud800"}}',
    )
    assert surrogate.status_code == 400
    assert surrogate.json()["errors"] == [
        {"field": "patient.clinical_note", "rule": surrogate.json()["errors"][0]["rule"]}
    ]
    assert "Unicode" in surrogate.json()["errors"][0]["rule"]


def _png(size=(64, 64), text: int = 0) -> str:
    buffer, info = io.BytesIO(), PngImagePlugin.PngInfo()
    if text:
        info.add_text(
            "comment", "x" * text, zip=True
        )  # compresses to kilobytes, inflates past Pillow's limit
    Image.new("L", size).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def test_an_oversized_png_text_chunk_is_not_called_bad_base64(hard):
    r = post(hard, "/predict", {"patient": {**PATIENT, "mri_image": _png(text=8 << 20)}})
    assert r.status_code == 400
    [error] = r.json()["errors"]
    assert error["field"] == "patient.mri_image" and "readable PNG or JPEG" in error["rule"]
    assert "base64-encoded (" not in error["rule"]


def test_the_pixel_cap_is_per_request_and_probes_answer_while_images_decode(hard):
    big = _png((4096, 4096))  # 16 Mi pixels in a few kilobytes
    batch = [{**PATIENT, "patient_id": f"I-{i}", "mri_image": big} for i in range(16)]
    r = post(hard, "/predict_batch", {"patients": batch})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "patients"
    assert "pixels per request" in r.json()["errors"][0]["rule"]
    slowest, done = 0.0, threading.Event()

    def probe():
        nonlocal slowest
        while not done.is_set():
            start = time.monotonic()
            assert httpx.get(hard[0] + "/livez", timeout=30).status_code == 200
            slowest = max(slowest, time.monotonic() - start)
            time.sleep(0.05)

    with ThreadPoolExecutor(1) as pool:
        probing = pool.submit(probe)
        answer = post(
            hard, "/predict_batch", {"patients": batch[:4]}
        )  # 64 Mi pixels: at the cap, decoded
        done.set()
        probing.result()
    assert answer.status_code == 200, answer.text
    assert (
        slowest < 1.0
    )  # decoding runs in threads, not on the event loop (it blocked it for seconds)


def test_body_limits_follow_the_route(hard):
    note = "Leg pain since the fall. " * 700  # 17.5 KB
    batch = [
        {**PATIENT, "patient_id": f"L-{i}", "clinical_note": note} for i in range(80)
    ]  # 1.4 MB
    assert post(hard, "/predict_batch", {"patients": batch}).status_code == 200
    r = post(
        hard,
        "/predict",
        {"patient": {**PATIENT, "clinical_note": note * 4}, "pad": "x" * (1 << 20)},
    )
    assert r.status_code == 413 and "1,048,576 bytes on /predict" in r.text


# --- auth -------------------------------------------------------------------------------------


def test_two_authorization_headers_are_refused_whatever_their_order(hard):
    for tokens in (["Bearer wrong", f"Bearer {KEY}"], [f"Bearer {KEY}", f"Bearer {KEY}"]):
        r = httpx.post(
            hard[0] + "/predict",
            json={"patient": PATIENT},
            timeout=60,
            headers=[("Authorization", t) for t in tokens],
        )
        assert r.status_code == 400 and r.json()["errors"] == [
            {"field": "headers.authorization", "rule": "must be sent once"}
        ]
    assert post(hard, "/predict", {"patient": PATIENT}).status_code == 200


# --- capacity ---------------------------------------------------------------------------------


def test_a_saturated_model_answers_503_with_retry_after_before_the_work_starts(hard):
    note = lambda b, i: " ".join(f"Pain {b}-{i}-{j} since visit {j}." for j in range(40))
    batches = [
        [{**PATIENT, "patient_id": f"S-{b}-{i}", "clinical_note": note(b, i)} for i in range(256)]
        for b in range(4)
    ]
    with ThreadPoolExecutor(len(batches)) as pool:
        answers = list(pool.map(lambda b: post(hard, "/predict_batch", {"patients": b}), batches))
    codes = [a.status_code for a in answers]
    assert 200 in codes and 503 in codes, codes  # the queue bound is 1 s of model work
    for batch, answer in zip(batches, answers):
        if answer.status_code == 503:
            assert int(answer.headers["Retry-After"]) >= 1
            assert answer.elapsed.total_seconds() < min(
                a.elapsed.total_seconds() for a in answers if a.status_code == 200
            )
        else:
            assert [p["patient_id"] for p in answer.json()["predictions"]] == [
                p["patient_id"] for p in batch
            ]
    log = hard[2].read_text(errors="replace")
    assert log.count("path=/score_many") >= 256 // 8  # chunks of 8 patients


# --- logs and /metrics ------------------------------------------------------------------------


def test_client_text_never_forges_log_lines_or_grows_metrics(hard):
    for path in ("/predict%0d%0aFORGED-LINE%20[ERROR]", "/x%1b[31mred", "/nul%00byte"):
        assert httpx.post(hard[0] + path, json={}, headers=AUTH).status_code == 404
    post(hard, "/predict", {"patient": {**PATIENT, "secret_key_name": 1}})
    sizes = []
    with httpx.Client(base_url=hard[0]) as client:
        for i in range(400):
            client.get(f"/probe-{i}-{'y' * 50}")
            if i in (99, 399):
                sizes.append(len(client.get("/metrics").content))
    metrics = httpx.get(hard[0] + "/metrics").text
    assert (
        sizes[1] < sizes[0] * 1.01 and "probe-1" not in metrics
    )  # 300 more unique paths: no new series
    assert 'endpoint="/unknown"' in metrics
    time.sleep(0.5)
    log = hard[2].read_text(errors="replace")
    assert (
        not re.search(r"^FORGED-LINE", log, re.MULTILINE)
        and "\x1b" not in log
        and "\x00" not in log
    )
    assert "secret_key_name" not in log and "Traceback" not in log
    assert re.search(r"\[WARNING\].*Exception on /predict \[POST\]: HTTP 400", log)
