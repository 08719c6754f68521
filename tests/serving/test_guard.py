"""The request guard in-process (Starlette's TestClient): credentials, content type, body limits,
`Retry-After` and the one shape of every 400. The same rules through a real server and raw
sockets (slow bodies, kept-alive connections) are in test_hardening.py."""

import json

import pytest
from spinecast.serving.guard import Guard
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

KEY = "guard-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def predict(request):
    body = await request.json()
    if "age" in body.get("patient", {}) and not isinstance(body["patient"]["age"], int):
        # what BentoML answers for a body pydantic refuses
        loc = ["patient", "age"]
        return JSONResponse({"detail": [{"loc": loc, "msg": "bad", "type": "int"}]}, 400)
    if body.get("busy"):
        return JSONResponse({"error": "queue full"}, 503)
    return JSONResponse({"got": len(body)})


async def parts(request):
    async def body():
        yield b'{"a": '
        yield b"1}"

    return StreamingResponse(body(), media_type="application/json")


async def livez(request):
    return JSONResponse({"ok": True})


@pytest.fixture
def client():
    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/predict_batch", predict, methods=["POST"]),
            Route("/livez", livez),
            Route("/parts", parts, methods=["POST"]),
        ]
    )
    guarded = Guard(
        app,
        api_key=KEY,
        max_body_bytes=1000,
        limits={"/predict_batch": 5000},
        body_timeout_s=5,
        retry_after=lambda: 7,
    )
    return TestClient(guarded)


def test_credentials_are_one_valid_bearer_token_except_on_the_probes(client):
    assert client.get("/livez").status_code == 200
    missing = client.post("/predict", json={})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/predict", json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.post("/predict", json={"a": 1}, headers=AUTH).json() == {"got": 1}
    twice = client.post("/predict", json={}, headers=[("Authorization", AUTH["Authorization"])] * 2)
    assert twice.status_code == 400
    assert twice.json()["errors"] == [
        {"field": "headers.authorization", "rule": "must be sent once"}
    ]


def test_only_json_bodies_reach_a_route(client):
    sent = client.post("/predict", content=b"a=1", headers={**AUTH, "Content-Type": "text/plain"})
    assert sent.status_code == 415
    assert sent.json()["errors"][0]["field"] == "headers.content-type"


def test_body_limits_are_per_route_and_count_chunked_bodies(client):
    body = json.dumps({"pad": "x" * 2000}).encode()
    small = client.post(
        "/predict", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert small.status_code == 413 and "1,000 bytes on /predict" in small.json()["error"]
    batch = client.post(
        "/predict_batch", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert batch.status_code == 200  # /predict_batch has its own, larger limit
    chunked = client.post(
        "/predict",
        content=iter([body[:600], body[600:]]),  # no Content-Length: counted as it arrives
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert chunked.status_code == 413


def test_every_400_has_one_shape_and_echoes_no_client_text(client):
    bad = client.post("/predict", json={"patient": {"age": "SENTINEL"}}, headers=AUTH)
    assert bad.status_code == 400
    assert bad.json()["errors"] == [{"field": "patient.age", "rule": "bad"}]
    assert set(bad.json()) == {"error", "detail", "errors"} and "SENTINEL" not in bad.text


def test_a_busy_answer_says_when_to_come_back(client):
    busy = client.post("/predict", json={"busy": True}, headers=AUTH)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "7"


def test_the_clinician_pages_files_need_no_key_but_nothing_else_under_them_does():
    from spinecast.serving import page

    async def model(request):
        return JSONResponse({"version": "v"})

    app = Starlette(routes=[Route("/model", model), *page.routes()])
    guarded = Guard(
        app, api_key=KEY, max_body_bytes=1000, limits={}, body_timeout_s=5, retry_after=lambda: 1
    )
    client = TestClient(guarded)
    index = client.get("/ui/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in index.headers["content-security-policy"]
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    assert client.head("/ui/app.js").status_code == 200
    assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/ui/nothing.js").status_code == 404  # no route: only the folder's files
    assert client.post("/ui/", json={}).status_code == 401  # reads only
    assert client.get("/uix").status_code == 401  # the prefix is /ui itself, not any /ui...
    assert client.get("/model").status_code == 401  # the page's own calls send the key
    assert client.get("/model", headers=AUTH).json() == {"version": "v"}


def test_a_body_sent_in_parts_goes_out_whole_with_its_length(client):
    sent = client.post("/parts", json={}, headers=AUTH)
    assert sent.json() == {"a": 1}
    assert sent.headers["content-length"] == str(len(b'{"a": 1}'))
    assert "transfer-encoding" not in sent.headers
