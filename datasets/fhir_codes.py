"""The FHIR R4 terminology SpineCast reads and writes: code systems, codes and what each means.

Owned here, once: `spinecast.datasets.fhir` (FHIR -> contract rows) and
`spinecast.datasets.fhir_write` (contract rows -> FHIR) both look codes up in these tables, and
datasets/README.md ("FHIR R4 in") lists every one of them. A code not listed is ignored with a
warning, never guessed from its display text.

Where no standard code exists (symptom duration, a workers' compensation claim, the 12-month
satisfaction label, an explicit "no earlier lumbar surgery"), SpineCast defines its own codes in
the `SPINECAST` code system below.
"""

from __future__ import annotations

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10_CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"  # WHO ICD-10: read with the same prefixes
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
CPT = "http://www.ama-assn.org/go/cpt"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"
SPINECAST = "https://spinecast.example.org/fhir/CodeSystem/spinecast"
PATIENT_ID = "https://spinecast.example.org/fhir/NamingSystem/patient-id"  # Patient.identifier

# Observation.code -> the contract column its value fills.
OBSERVATIONS = {
    (LOINC, "39156-5"): "bmi",  # Body mass index (BMI) [Ratio], kg/m2
    (LOINC, "72166-2"): "smoking",  # Tobacco smoking status (value: SMOKING below)
    (LOINC, "97909-6"): "odi",  # Oswestry disability index score ODI (baseline or 12 months)
    (LOINC, "72514-3"): "pain_nrs",  # Pain severity 0-10 verbal numeric rating (site: PAIN_SITES)
    (SNOMED, "413347006"): "asa_class",  # Finding relating to ASA physical status (value: ASA)
    (SPINECAST, "symptom-duration"): "symptom_duration_weeks",  # valueQuantity, a time unit
    (SPINECAST, "workers-comp"): "workers_comp",  # valueBoolean: open claim or litigation
    (SPINECAST, "prior-lumbar-surgery"): "prior_spine_surgery",  # valueBoolean
    (SPINECAST, "satisfied-12m"): "satisfied",  # valueBoolean: NASS satisfaction index 1 or 2
}

# Tobacco smoking status values (the US Core smoking-status value set, SNOMED CT).
SMOKING = {
    "266919005": "never",  # Never smoked tobacco
    "8517006": "former",  # Ex-smoker
    "77176002": "current",  # Smoker
    "449868002": "current",  # Smokes tobacco daily
    "428041000124106": "current",  # Occasional tobacco smoker
    "428061000124105": "current",  # Light tobacco smoker
    "428071000124103": "current",  # Heavy tobacco smoker
    "266927001": None,  # Tobacco smoking consumption unknown: not recorded
}
SMOKING_CODE = {"never": "266919005", "former": "8517006", "current": "449868002"}

# Pain NRS body sites (Observation.bodySite, SNOMED CT).
PAIN_SITES = {"37822005": "back_pain_nrs", "61685007": "leg_pain_nrs"}  # lower back; lower limb
PAIN_SITE_CODE = {column: code for code, column in PAIN_SITES.items()}

# American Society of Anesthesiologists physical status class 1..5 (SNOMED CT findings).
ASA = {"413495001": 1, "413496000": 2, "413497009": 3, "413498004": 4, "413499007": 5}
ASA_CODE = {grade: code for code, grade in ASA.items()}

# Durations -> weeks (UCUM units of Observation.valueQuantity.code).
WEEKS_PER_UNIT = {"wk": 1.0, "d": 1 / 7, "mo": 30.4375 / 7, "a": 365.25 / 7}

# Condition.code: ICD-10(-CM) prefixes (dots ignored) and SNOMED CT codes -> (column, value).
ICD10_PREFIXES = {
    **{p: ("diabetes", True) for p in ("E08", "E09", "E10", "E11", "E13", "E14")},
    "F32": ("depression", True),  # depressive episode
    "F33": ("depression", True),  # recurrent depressive disorder
    "F41": ("anxiety", True),  # other anxiety disorders
    "M511": ("diagnosis", "disc_herniation"),  # disc disorder with radiculopathy
    "M512": ("diagnosis", "disc_herniation"),  # other intervertebral disc displacement
    "M480": ("diagnosis", "spinal_stenosis"),
    "M431": ("diagnosis", "spondylolisthesis"),
    "M545": ("diagnosis", "nonspecific_low_back_pain"),  # low back pain
}
SNOMED_CONDITIONS = {
    "73211009": ("diabetes", True),  # Diabetes mellitus
    "46635009": ("diabetes", True),  # Diabetes mellitus type 1
    "44054006": ("diabetes", True),  # Diabetes mellitus type 2
    "35489007": ("depression", True),  # Depressive disorder
    "370143000": ("depression", True),  # Major depressive disorder
    "197480006": ("anxiety", True),  # Anxiety disorder
    "21897009": ("anxiety", True),  # Generalized anxiety disorder
    "76107001": ("diagnosis", "disc_herniation"),  # Prolapsed lumbar intervertebral disc
    "18347007": ("diagnosis", "spinal_stenosis"),  # Spinal stenosis of lumbar region
    "274152003": ("diagnosis", "spondylolisthesis"),  # Spondylolisthesis
    "25631001": ("diagnosis", "spondylolisthesis"),  # Degenerative spondylolisthesis
    "279039007": ("diagnosis", "nonspecific_low_back_pain"),  # Low back pain
}
# What the converter writes (ICD-10-CM): one code per comorbidity and diagnosis.
CONDITION_CODE = {
    "diabetes": "E11.9",  # Type 2 diabetes mellitus without complications
    "depression": "F32.A",  # Depression, unspecified
    "anxiety": "F41.9",  # Anxiety disorder, unspecified
    "disc_herniation": "M51.16",  # Intervertebral disc disorders with radiculopathy, lumbar
    "spinal_stenosis": "M48.061",  # Spinal stenosis, lumbar, without neurogenic claudication
    "spondylolisthesis": "M43.16",  # Spondylolisthesis, lumbar region
    "nonspecific_low_back_pain": "M54.50",  # Low back pain, unspecified
}

# Opioids (MedicationStatement.medicationCodeableConcept): the ATC class N02A and RxNorm
# ingredients. A product-level RxNorm code (a tablet strength) is not in this list.
ATC_OPIOID_PREFIX = "N02A"
RXNORM_OPIOIDS = {
    "7052": "morphine",
    "7804": "oxycodone",
    "5489": "hydrocodone",
    "10689": "tramadol",
    "2670": "codeine",
    "3423": "hydromorphone",
    "4337": "fentanyl",
    "6813": "methadone",
    "7814": "oxymorphone",
    "787390": "tapentadol",
    "1819": "buprenorphine",
}

# Lumbar surgery (Procedure.code: prior surgery; ServiceRequest.code: the planned treatment).
SURGERY = {
    (SNOMED, "387731002"): "decompression",  # Laminectomy
    (SNOMED, "42515009"): "decompression",  # Excision of intervertebral disc (discectomy)
    (SNOMED, "178625001"): "decompression",  # Primary lumbar microdiscectomy
    (SNOMED, "55705006"): "fusion",  # Spinal fusion
    (CPT, "63030"): "decompression",  # Laminotomy with discectomy, 1 interspace, lumbar
    (CPT, "63047"): "decompression",  # Laminectomy, facetectomy and foraminotomy, lumbar
    (CPT, "22612"): "fusion",  # Arthrodesis, posterior or posterolateral, lumbar
    (CPT, "22630"): "fusion",  # Arthrodesis, posterior interbody, lumbar
    (CPT, "22633"): "fusion",  # Arthrodesis, combined posterior interbody, lumbar
}
TREATMENTS = {
    **SURGERY,
    (SNOMED, "91251008"): "physical_therapy",  # Physical therapy procedure
    (CPT, "97110"): "physical_therapy",  # Therapeutic exercise
    (CPT, "62322"): "epidural_steroid_injection",  # Interlaminar epidural, lumbar, no imaging
    (CPT, "62323"): "epidural_steroid_injection",  # Interlaminar epidural, lumbar, imaging
    (CPT, "64483"): "epidural_steroid_injection",  # Transforaminal epidural, lumbar
    **{
        (SPINECAST, t): t
        for t in ("physical_therapy", "epidural_steroid_injection", "decompression", "fusion")
    },
}
TREATMENT_CODE = {
    "physical_therapy": (SNOMED, "91251008"),
    "epidural_steroid_injection": (CPT, "62323"),
    "decompression": (SNOMED, "387731002"),
    "fusion": (SNOMED, "55705006"),
}

# DocumentReference.type (the clinic note) and DiagnosticReport.code (the lumbar MRI report).
NOTE_TYPES = {
    "11488-4": "Consult note",
    "34109-9": "Note",
    "11506-3": "Progress note",
    "34117-2": "History and physical note",
}
MRI_REPORTS = {
    "24531-6": "MR Lumbar spine WO contrast",
    "24532-4": "MR Lumbar spine W contrast",
    "24533-2": "MR Lumbar spine WO and W contrast",
}
MR_MODALITY = (DICOM, "MR")  # Media.modality of the key image


def condition_meaning(system: str | None, code: str | None):
    """(column, value) for a Condition code, or None when SpineCast does not know it."""
    if not code:
        return None
    if system in (ICD10_CM, ICD10):
        plain = code.replace(".", "").upper()
        for n in (4, 3):  # the longer prefix first
            if plain[:n] in ICD10_PREFIXES:
                return ICD10_PREFIXES[plain[:n]]
        return None
    if system == SNOMED:
        return SNOMED_CONDITIONS.get(code)
    return None


def is_opioid(system: str | None, code: str | None) -> bool:
    if system == ATC and code:
        return code.upper().startswith(ATC_OPIOID_PREFIX)
    return system == RXNORM and code in RXNORM_OPIOIDS
