"""The clinician page at /ui in a real headless browser: Playwright driving Debian's Chromium
(`tools.browser.ensure_chromium` installs it when missing) against the session's `bentoml serve`
of the tiny model, which has an API key set. Saves the screenshot the README shows
(docs/ui.png)."""

from pathlib import Path

import httpx
import pytest
from spinecast.serving.schemas import EXAMPLE_PATIENT

from tools.bento import stage
from tools.browser import ensure_chromium

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
SCREEN = {"width": 1366, "height": 768}  # a laptop screen: the main answer fits without scrolling
SCREENSHOT = ROOT / "docs" / "ui.png"
TREATMENTS = {"physical therapy", "epidural steroid injection", "decompression", "fusion"}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    try:
        executable = ensure_chromium()
    except SystemExit as err:  # not root and no chromium: say what to install
        pytest.fail(str(err))
    with sync_playwright() as playwright:
        # root (CI, containers) cannot use Chromium's user-namespace sandbox
        browser = playwright.chromium.launch(executable_path=str(executable), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh tab (its own sessionStorage) on /ui at laptop size; `page.messages` collects the
    console's messages."""
    url, _, key = server
    context = browser.new_context(viewport=SCREEN)
    tab = context.new_page()
    tab.messages = []
    tab.on("console", lambda message: tab.messages.append((message.type, message.text)))
    tab.goto(f"{url}/ui")
    tab.key = key
    yield tab
    context.close()


def _connect(page, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#connect")


def _submit_example(page, **changes) -> None:
    from playwright.sync_api import expect

    _connect(page, page.key)
    expect(page.locator("#patient-form")).to_be_visible(timeout=20_000)
    page.click("#example")
    for name, value in changes.items():
        page.fill(f"[name={name}]", value)
    page.click("#submit")


def test_the_page_is_served_without_the_key_and_asks_for_it(page, server):
    from playwright.sync_api import expect

    url, _, key = server
    assert httpx.get(f"{url}/ui/").status_code == 200
    assert httpx.get(f"{url}/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.post(f"{url}/predict", json={"patient": EXAMPLE_PATIENT}).status_code == 401
    # KnownPaths reads the routes: the page's files are known; any other /ui path is `/unknown`
    # (so not the page's, and the key is asked for) and then not found
    assert httpx.get(f"{url}/ui/no-such-file.js").status_code == 401
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{url}/ui/no-such-file.js", headers=auth).status_code == 404
    metrics = httpx.get(f"{url}/metrics").text
    assert 'endpoint="/ui/app.js"' in metrics and "no-such-file" not in metrics
    expect(page.locator("#key-status")).to_have_text("API key needed or wrong", timeout=20_000)
    assert page.locator("#patient-form").is_hidden()
    _connect(page, "not-the-key")
    expect(page.locator("#key-status")).to_have_text("API key needed or wrong")
    _connect(page, key)
    expect(page.locator("#key-status")).to_have_text("key accepted", timeout=20_000)
    expect(page.locator("[name=age]")).to_have_attribute("placeholder", "18 to 110")
    options = page.locator("select[name=treatment] option").all_text_contents()
    assert options[0] == "not recorded" and set(options[1:]) == TREATMENTS
    assert page.evaluate("sessionStorage.getItem('spinecast.apiKey')") == key
    assert page.evaluate("localStorage.length") == 0  # the key stays in this tab


def _inside(box: dict) -> bool:
    return (
        box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= SCREEN["width"]
        and box["y"] + box["height"] <= SCREEN["height"]
    )


def test_a_patient_gets_four_treatments_and_the_recommendation_on_one_screen(page):
    from playwright.sync_api import expect

    _submit_example(page)
    cards = page.locator("#cards .card")
    expect(cards).to_have_count(4, timeout=60_000)
    assert {c.locator("h3").text_content() for c in cards.all()} == TREATMENTS
    assert page.locator("#rec-treatment").text_content() in TREATMENTS
    assert page.locator("#rec-reason").text_content().strip()
    assert page.locator(".card.recommended").count() == 1
    assert "satisfied at 12 months" in cards.first.text_content()
    assert "ODI improves ≥ 15" in cards.first.text_content()
    assert "ODI at 12 months" in cards.first.text_content()
    # the main answer is on the screen as it is, without scrolling the page
    assert page.evaluate("[window.scrollY, document.documentElement.scrollHeight]") == [0, 768]
    boxes = [
        page.locator("#recommendation").bounding_box(),
        *(c.bounding_box() for c in cards.all()),
    ]
    assert all(_inside(box) for box in boxes), boxes
    # the explanation: influential sentences highlighted in the texts that were sent
    marks = page.locator("#doc-clinical_note mark, #doc-imaging_report mark")
    assert marks.count() > 0
    note = page.locator("#doc-clinical_note").text_content()
    assert note.startswith(EXAMPLE_PATIENT["clinical_note"][:40])
    assert page.locator("#field-effects li").count() > 0
    assert page.locator("#modality-effects li").count() > 0
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    # no patient text in the console, and no script or CSP errors there
    # (the one expected error: the first /model call, before the key was entered, got 401)
    errors = [t for kind, t in page.messages if kind == "error" and "status of 401" not in t]
    assert not errors, errors
    assert not any(EXAMPLE_PATIENT["clinical_note"][:30] in text for _, text in page.messages)


def test_a_bad_field_shows_the_servers_400_naming_field_and_rule(page):
    from playwright.sync_api import expect

    _submit_example(page, age="7")
    error = page.locator("#form-error")
    expect(error).to_be_visible(timeout=30_000)
    expect(error).to_contain_text("The server refused this patient")
    expect(error).to_contain_text("(age)")
    expect(error).to_contain_text("18")
    assert page.locator("[name=age]").get_attribute("aria-invalid") == "true"
    assert page.locator("#result").is_hidden()


def test_a_pasted_patient_json_fills_the_form(page):
    import json

    from playwright.sync_api import expect

    _connect(page, page.key)
    expect(page.locator("#patient-form")).to_be_visible(timeout=20_000)
    page.click("#tab-json")
    page.fill("#patient-json", json.dumps({"patient": {**EXAMPLE_PATIENT, "extra": 1}}))
    page.click("#json-load")
    expect(page.locator("#form-error")).to_contain_text("1 field(s) the contract does not define")
    page.fill("#patient-json", json.dumps({**EXAMPLE_PATIENT, "age": 61, "smoking": None}))
    page.click("#json-load")
    expect(page.locator("#patient-form")).to_be_visible()
    assert page.locator("[name=age]").input_value() == "61"
    assert page.locator("[name=smoking]").input_value() == ""  # null: not recorded
    assert page.locator("[name=diagnosis]").input_value() == '"disc_herniation"'
    assert page.locator("#form-error").is_hidden()


def test_the_bento_stage_and_the_package_carry_the_page(tmp_path):
    staged = stage(tmp_path / "stage") / "spinecast" / "serving" / "ui"
    assert {p.name for p in staged.iterdir()} >= {"index.html", "app.js", "style.css"}
    assert "spinecast/serving/ui/*" in (ROOT / "bentofile.yaml").read_text()
    assert (
        '"spinecast.serving" = ["ui/*.html", "ui/*.js", "ui/*.css"]'
        in (ROOT / "pyproject.toml").read_text()
    )


def test_a_fhir_bundle_opens_into_the_form_with_its_warnings(page, tmp_path):
    import json

    from playwright.sync_api import expect
    from spinecast.datasets.fhir import to_bundle

    bundle = to_bundle({k: v for k, v in EXAMPLE_PATIENT.items() if k != "mri_image"} | {"age": 62})
    condition = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition")
    condition["resource"]["code"]["coding"] = [{"system": "http://snomed.info/sct", "code": "1"}]
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    _connect(page, page.key)
    expect(page.locator("#patient-form")).to_be_visible(timeout=20_000)
    page.click("#tab-json")
    page.set_input_files("#fhir-file", str(tmp_path / "bundle.json"))
    expect(page.locator("#form-error")).to_contain_text("Condition: unknown code", timeout=20_000)
    assert page.locator("[name=age]").input_value() == "62"
    (tmp_path / "bad.json").write_text(json.dumps({"resourceType": "Bundle", "type": "x"}))
    page.click("#tab-json")
    page.set_input_files("#fhir-file", str(tmp_path / "bad.json"))
    expect(page.locator("#form-error")).to_contain_text("The server refused this patient")
