// The SpineCast clinician page. Builds the patient form from GET /model's `input_schema` (the
// contract's Patient), sends the patient to POST /explain and shows the answer. Every value
// inserted into the page goes in as text (textContent), never as HTML; nothing is logged to the
// console; the API key lives in this tab's sessionStorage only.
"use strict";

const KEY = "spinecast.apiKey";
const $ = (id) => document.getElementById(id);
const LABELS = {
  patient_id: "Patient ID", bmi: "BMI (kg/m²)", asa_class: "ASA class",
  symptom_duration_weeks: "Symptoms (weeks)", baseline_odi: "Baseline ODI",
  back_pain_nrs: "Back pain (0-10)", leg_pain_nrs: "Leg pain (0-10)",
  workers_comp: "Workers' comp", opioid_use: "Opioid use", prior_spine_surgery: "Prior surgery",
  treatment: "Planned treatment", clinical_note: "Clinic note", imaging_report: "MRI report",
  mri_image: "MRI key image (PNG or JPEG)",
  // facts read from the text (spinecast.datasets.sides)
  note_side_left: "Leg symptoms left (note)", note_side_right: "Leg symptoms right (note)",
  report_side_left: "Root compressed left (report)",
  report_side_right: "Root compressed right (report)",
  side_agreement: "Symptom side matches compression",
};
const state = { schema: null, card: null, treatments: [], image: null, sent: null };

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== null) node.textContent = String(text);
  return node;
}
const words = (name) => String(name).replaceAll("_", " ");
const label = (name) => LABELS[name] || (state.schema?.properties[name]?.title ?? words(name));
const pct = (p) => `${Math.round(p * 100)}%`;
const points = (d) => `${d >= 0 ? "+" : "−"}${Math.abs(d * 100).toFixed(1)}`;

function headers() {
  const key = sessionStorage.getItem(KEY);
  const out = { "Content-Type": "application/json", Accept: "application/json" };
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function call(method, path, body) {
  try {
    const response = await fetch(path, {
      method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store",
    });
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    return { status: response.status, data };
  } catch {
    return { status: 0, data: null };
  }
}

// ---- the model card and the form built from its input schema

async function connect() {
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
  $("key-status").textContent = "connecting…";
  const { status, data } = await call("GET", "/model");
  if (status === 401) {
    $("key-status").textContent = "API key needed or wrong";
    return;
  }
  if (status !== 200 || !data?.input_schema) {
    $("key-status").textContent = status ? `model card: HTTP ${status}` : "server not reached";
    return;
  }
  $("key-status").textContent = key ? "key accepted" : "connected";
  state.card = data;
  $("model-version").textContent = `model ${data.version ?? ""}`;
  if (!state.schema) buildForm(data.input_schema);
}

function control(name, prop) {
  const enumValues = prop.enum?.filter((v) => v !== null);
  if (enumValues || prop.type === "boolean") {
    const select = el("select", { name });
    select.append(el("option", { value: "" }, "not recorded"));
    const options = enumValues ?? [true, false];
    for (const v of options) {
      const text = typeof v === "boolean" ? (v ? "yes" : "no") : words(v);
      select.append(el("option", { value: JSON.stringify(v) }, text));
    }
    return select;
  }
  if (prop.type === "integer" || prop.type === "number") {
    const step = prop.type === "integer" ? "1" : "any";
    const range = `${prop.minimum} to ${prop.maximum}`;
    return el("input", { name, type: "number", step, placeholder: range, inputmode: "decimal" });
  }
  return el("input", { name, type: "text", spellcheck: "false" });
}

function buildForm(schema) {
  state.schema = schema;
  state.treatments = schema.properties.treatment.enum.filter((t) => t !== null);
  const grid = $("fields"), texts = $("texts");
  for (const [name, prop] of Object.entries(schema.properties)) {
    const required = (schema.required || []).includes(name);
    const title = `${prop.description || ""}${required ? " (required)" : ""}`;
    const wrap = el("label", { title }, label(name) + (required ? " *" : ""));
    if (name === "mri_image") texts.append(imageControl(wrap));
    else if ((prop.maxLength || 0) > 1000) {
      wrap.append(el("textarea", { name, spellcheck: "false", maxlength: prop.maxLength }));
      texts.append(wrap);
    } else {
      wrap.append(control(name, prop));
      grid.append(wrap);
    }
  }
  $("form-wait").hidden = true;
  $("patient-form").hidden = false;
  $("submit").disabled = false;
}

function imageControl(wrap) {
  const row = el("div", { id: "image-row" });
  const input = el("input", { type: "file", id: "mri-file", accept: "image/png,image/jpeg" });
  const preview = el("img", { id: "mri-preview", alt: "MRI key image", hidden: "" });
  const remove = el("button", { type: "button", id: "mri-remove", hidden: "" }, "Remove");
  input.addEventListener("change", () => readImage(input.files[0]));
  remove.addEventListener("click", () => setImage(null));
  row.append(input, preview, remove);
  wrap.append(row);
  return wrap;
}

function readImage(file) {
  if (!file) return setImage(null);
  const reader = new FileReader();
  reader.onload = () => setImage(String(reader.result).split(",", 2)[1] || null);
  reader.readAsDataURL(file);
}

function setImage(base64) {
  state.image = base64;
  const preview = $("mri-preview");
  preview.hidden = !base64;
  $("mri-remove").hidden = !base64;
  if (base64) preview.src = `data:image/*;base64,${base64}`;
  else { preview.removeAttribute("src"); $("mri-file").value = ""; }
}

function fillForm(patient) {
  for (const field of $("patient-form").elements) {
    if (!field.name) continue;
    const value = patient[field.name];
    const empty = value === undefined || value === null;
    if (field.tagName === "SELECT") field.value = empty ? "" : JSON.stringify(value);
    else field.value = empty ? "" : String(value);
    field.removeAttribute("aria-invalid");
  }
  setImage(patient.mri_image || null);
}

function examplePatient() {
  const out = {};
  for (const [name, prop] of Object.entries(state.schema.properties)) {
    if (prop.examples?.length) out[name] = prop.examples[0];
  }
  return out;
}

// Read the form into a Patient; local problems are only the ones the server cannot see (text
// that is not a number in a number field: the browser hands it over as empty).
function readForm() {
  const patient = {}, problems = [];
  for (const field of $("patient-form").elements) {
    if (!field.name) continue;
    if (field.validity?.badInput) problems.push({ field: field.name, rule: "must be a number" });
    if (field.value === "") continue;
    if (field.tagName === "SELECT") patient[field.name] = JSON.parse(field.value);
    else if (field.type === "number") patient[field.name] = Number(field.value);
    else patient[field.name] = field.value;
  }
  if (state.image) patient.mri_image = state.image;
  return { patient, problems };
}

function loadJson() {
  let data;
  try { data = JSON.parse($("patient-json").value); } catch {
    return showErrors("The pasted text is not valid JSON.", []);
  }
  const patient = data && typeof data === "object" && data.patient ? data.patient : data;
  if (!patient || typeof patient !== "object" || Array.isArray(patient)) {
    return showErrors("The JSON must be one Patient object.", []);
  }
  const unknown = Object.keys(patient).filter((k) => !(k in state.schema.properties));
  if (unknown.length) {
    return showErrors(`The JSON has ${unknown.length} field(s) the contract does not define.`, []);
  }
  fillForm(patient);
  showTab("form");
  showErrors(null);
}

async function openFhir(file) {
  let bundle;
  try { bundle = JSON.parse(await file.text()); } catch {
    return showErrors("The file is not valid JSON.", []);
  }
  const { status, data } = await call("POST", "/fhir/patient", bundle);
  if (status !== 200) return explainFailure(status, data);
  fillForm(data.patient);
  showTab("form");
  const n = data.warnings.length;
  showErrors(n ? `Read from FHIR; ${n} item(s) not used:` : null, []);
  if (!n) return;
  const list = el("ul");
  for (const w of data.warnings) list.append(el("li", {}, w));
  $("form-error").append(list);
}

// ---- errors, near the form

function showErrors(message, errors = []) {
  const box = $("form-error");
  for (const field of $("patient-form").elements) field.removeAttribute?.("aria-invalid");
  box.replaceChildren();
  box.hidden = !message;
  if (!message) return;
  box.append(el("strong", {}, message));
  const list = el("ul");
  for (const { field, rule } of errors) {
    const name = String(field).replace(/^patient\./, "");
    const input = $("patient-form").elements.namedItem(name);
    if (input?.setAttribute) input.setAttribute("aria-invalid", "true");
    list.append(el("li", {}, `${label(name)} (${name}): ${rule}`));
  }
  if (errors.length) box.append(list);
}

function explainFailure(status, data) {
  if (status === 400) return showErrors("The server refused this patient:", data?.errors || []);
  if (status === 401) {
    $("key-status").textContent = "API key needed or wrong";
    return showErrors("The API key is missing or wrong: enter it above and press Connect.");
  }
  if (status === 0) return showErrors("The server could not be reached.");
  const why = typeof data?.error === "string" ? data.error : "no details";
  showErrors(`The server answered HTTP ${status}: ${why}`);
}

// ---- the answer

async function submit(event) {
  event.preventDefault();
  const { patient, problems } = readForm();
  if (problems.length) return showErrors("Some fields are not valid:", problems);
  showErrors(null);
  $("submit").disabled = true;
  $("busy").textContent = "scoring…";
  const { status, data } = await call("POST", "/explain", { patient });
  $("submit").disabled = false;
  $("busy").textContent = "";
  if (status !== 200) return explainFailure(status, data);
  state.sent = patient;
  render(data);
}

function render(prediction) {
  $("placeholder").hidden = true;
  $("result").hidden = false;
  $("rec-treatment").textContent = words(prediction.recommended_treatment);
  const planned = prediction.planned_treatment;
  $("rec-planned").textContent = planned ? `(planned: ${words(planned)})` : "(no treatment planned)";
  $("rec-reason").textContent = prediction.recommendation_reason || "";
  const byTreatment = Object.fromEntries(prediction.outcomes.map((o) => [o.treatment, o]));
  $("cards").replaceChildren(
    ...state.treatments.filter((t) => byTreatment[t]).map((t) => card(byTreatment[t], prediction)),
  );
  $("warnings").replaceChildren(...prediction.warnings.map((w) => el("li", {}, w)));
  renderExplanation(prediction.explanation, planned);
}

function card(outcome, prediction) {
  const recommended = outcome.treatment === prediction.recommended_treatment;
  const planned = outcome.treatment === prediction.planned_treatment;
  const node = el("article", { class: `card${recommended ? " recommended" : ""}` });
  node.dataset.treatment = outcome.treatment;
  const tags = [recommended && "RECOMMENDED", planned && "PLANNED"].filter(Boolean).join(" · ");
  node.append(el("h3", {}, words(outcome.treatment)), el("div", { class: "tags" }, tags));
  node.append(el("div", { class: "big" }, pct(outcome.p_satisfied)));
  const coverage = Math.round((state.card?.decision?.interval ?? 0.8) * 100);
  const low = outcome.p_satisfied_low, high = outcome.p_satisfied_high;
  const interval = low != null && high != null ? `, ${coverage}% interval ${pct(low)}–${pct(high)}` : "";
  node.append(el("div", { class: "sub" }, `satisfied at 12 months${interval}`));
  node.append(bar(outcome.p_satisfied, low, high));
  const facts = el("dl");
  const supported = outcome.supported === false ? "few patients like this" : "yes";
  const rows = [
    ["ODI improves ≥ 15", pct(outcome.p_mcid), "Chance of a clinically important improvement (MCID)"],
    ["ODI at 12 months", outcome.odi_12m.toFixed(1), "Expected Oswestry Disability Index (0-100)"],
    ["Benefit over PT", outcome.benefit == null ? "—" : `${points(outcome.benefit)} pts`,
      "Predicted satisfaction minus that of physical therapy, percentage points"],
    ["Similar patients", outcome.support == null ? "—" : `${supported} (${pct(outcome.support)})`,
      "Share of similar patients who received this treatment in the training data"],
  ];
  for (const [term, value, title] of rows) {
    facts.append(el("dt", { title }, term), el("dd", { title }, value));
  }
  if (outcome.supported === false) facts.lastChild.classList.add("unsupported");
  node.append(facts);
  return node;
}

function bar(p, low, high) {
  const node = el("div", { class: "bar", "aria-hidden": "true" });
  if (low != null && high != null) {
    const range = el("span", { class: "range" });
    range.style.left = `${low * 100}%`;
    range.style.width = `${Math.max(high - low, 0.005) * 100}%`;
    node.append(range);
  }
  const point = el("span", { class: "point" });
  point.style.left = `calc(${p * 100}% - 1px)`;
  node.append(point);
  return node;
}

// ---- the explanation: sentences highlighted in the texts, fields and modalities as bars

function renderExplanation(explanation, planned) {
  const box = $("explanation");
  box.hidden = !explanation;
  if (!explanation) return;
  const which = explanation.treatment === planned ? "planned" : "recommended";
  $("why-title").textContent = `What moves the prediction under ${words(explanation.treatment)} (${which})`;
  const all = [...explanation.sentences, ...explanation.fields];
  const scale = Math.max(1e-9, ...all.map((e) => Math.abs(e.effect)));
  for (const source of ["clinical_note", "imaging_report"]) {
    const sentences = explanation.sentences.filter((s) => s.source === source);
    highlight($(`doc-${source}`), state.sent?.[source], sentences, scale);
  }
  $("field-effects").replaceChildren(
    ...explanation.fields.map((f) => effectRow(label(f.field), f.effect, scale)),
  );
  const modalities = Object.entries(explanation.modalities);
  const mScale = Math.max(1e-9, ...modalities.map(([, d]) => Math.abs(d)));
  $("modality-effects").replaceChildren(...modalities.map(([m, d]) => effectRow(words(m), d, mScale)));
}

// `effect` is the change in p_satisfied when the item is left out: an item with a negative
// effect raises the prediction.
const direction = (effect) => (effect <= 0 ? "up" : "down");
const strength = (effect, scale) => `s${Math.min(3, 1 + Math.floor((Math.abs(effect) / scale) * 3))}`;

function highlight(container, text, sentences, scale) {
  container.replaceChildren();
  if (!text) {
    container.append(el("span", { class: "muted" }, "Not sent."));
    return;
  }
  const spans = [], missing = [];
  let cursor = 0;
  for (const s of [...sentences].sort((a, b) => a.index - b.index)) {
    let at = text.indexOf(s.text, cursor);
    if (at < 0) at = text.indexOf(s.text);
    if (at < 0 || !s.text) missing.push(s);
    else { spans.push({ at, end: at + s.text.length, s }); cursor = at + s.text.length; }
  }
  spans.sort((a, b) => a.at - b.at);
  let shown = 0;
  for (const { at, end, s } of spans) {
    if (at < shown) { missing.push(s); continue; }
    container.append(document.createTextNode(text.slice(shown, at)), mark(s, scale));
    shown = end;
  }
  container.append(document.createTextNode(text.slice(shown)));
  for (const s of missing) container.append(document.createTextNode(" … "), mark(s, scale));
}

function mark(s, scale) {
  const verb = s.effect <= 0 ? "raises" : "lowers";
  const title = `${verb} predicted satisfaction by ${Math.abs(s.effect * 100).toFixed(1)} points`;
  return el("mark", { class: `${direction(s.effect)} ${strength(s.effect, scale)}`, title }, s.text);
}

function effectRow(name, effect, scale) {
  const row = el("li", { class: direction(effect) });
  const track = el("div");
  const fill = el("div", { class: "fill" });
  fill.style.width = `${(Math.abs(effect) / scale) * 100}%`;
  track.append(fill);
  row.append(el("span", {}, name), track, el("span", { class: "value" }, points(-effect)));
  return row;
}

// ---- wiring

function showTab(which) {
  const json = which === "json";
  $("tab-form").setAttribute("aria-selected", String(!json));
  $("tab-json").setAttribute("aria-selected", String(json));
  $("patient-form").hidden = json || !state.schema;
  $("json-pane").hidden = !json;
  if (json && state.schema) $("patient-json").value = JSON.stringify(readForm().patient, null, 1);
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem(KEY) || "";
  $("key-form").addEventListener("submit", (e) => { e.preventDefault(); connect(); });
  $("patient-form").addEventListener("submit", submit);
  $("tab-form").addEventListener("click", () => showTab("form"));
  $("tab-json").addEventListener("click", () => showTab("json"));
  $("json-load").addEventListener("click", () => state.schema && loadJson());
  $("fhir-file").addEventListener("change", (e) => {
    const [file] = e.target.files;
    if (file && state.schema) openFhir(file);
    e.target.value = "";
  });
  $("example").addEventListener("click", () => state.schema && fillForm(examplePatient()));
  $("clear").addEventListener("click", () => state.schema && fillForm({}));
  connect();
});
