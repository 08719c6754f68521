"""The side of the leg symptoms (note), of the compressed root (report) and their agreement."""

import math

import numpy as np
import pandas as pd
import pytest
from spinecast.datasets.features import NUMERIC_FIELDS, FeatureEncoding
from spinecast.datasets.sides import SIDE_FEATURES, side_features


def sides(note, report=None) -> dict[str, float]:
    return dict(zip(SIDE_FEATURES, side_features([note], [report])[0]))


@pytest.mark.parametrize(
    "note, left, right",
    [
        ("Pain radiates down the left leg to the foot. SLR positive on the L at 40 degrees.", 1, 0),
        ("LBP radiating to the RLE. Hypoesthesia R over the dorsum of the foot.", 0, 1),
        ("Neurogenic claudication in both legs, L>R.", 1, 1),
        ("Leg pain b/l. Achilles reflex 1+ on the left, 2+ contralateral.", 1, 0.5),
        # other languages and their abbreviations
        ("Ausstrahlende Schmerzen ins linke Bein, Lasègue li. positiv.", 1, 0),
        ("Douleur radiculaire du membre inférieur droit.", 0, 1),
        ("Dolor irradiado a pierna izquierda; Lasègue positivo izq.", 1, 0),
        # typos
        ("Sciatica in the rght leg.", 0, 1),
    ],
)
def test_the_side_of_the_symptoms_is_read_from_the_note(note, left, right):
    got = sides(note)
    assert (got["note_side_left"], got["note_side_right"]) == (left, right)


@pytest.mark.parametrize(
    "note",
    [
        "Denies right leg pain. SLR negative on the left.",  # negated: no side stated
        "Strength 5/5 bilaterally; SILT bilaterally. Reflexes 2+ and symmetric bilaterally.",
        "MRI L-spine reviewed. L5-S1 degeneration, L4-5 disc bulge.",  # L-spine and L5 are levels
        "Axial low back pain without radiation to the right or left leg.",
        None,
        "",
    ],
)
def test_a_note_that_states_no_symptomatic_side_gives_missing_not_a_guess(note):
    got = sides(note, "Left paracentral protrusion compressing the traversing left L5 root.")
    assert math.isnan(got["note_side_left"]) and math.isnan(got["note_side_right"])
    assert math.isnan(got["side_agreement"])
    assert got["report_side_left"] == 1.0


def test_a_negation_covers_what_follows_it_and_a_positive_finding_beside_it_stays():
    assert sides("Positive SLR on the left, negative on the right.")["note_side_right"] == 0.0
    assert sides("Strength 5/5 except EHL 4/5 on the left.")["note_side_left"] == 1.0
    # "without" negates the displacement, not the contact with the left root
    got = sides(
        None, "Protrusion contacting the traversing left L5 nerve root without displacement."
    )
    assert (got["report_side_left"], got["report_side_right"]) == (1.0, 0.0)


@pytest.mark.parametrize(
    "report, left",
    [
        ("Left foraminal narrowing. Moderate central canal stenosis.", None),  # no root named
        ("No nerve root compression on the right.", None),
        ("Kompression der Nervenwurzel L5 links.", 1.0),
        ("Hernie discale comprimant la racine S1 droite.", 0.0),
    ],
)
def test_the_report_side_is_that_of_a_named_root_or_compression(report, left):
    got = sides(None, report)["report_side_left"]
    assert (math.isnan(got) and left is None) or got == left


def test_agreement_is_one_on_a_shared_side_and_zero_on_the_other_side():
    note = "Shooting pain down the left leg."
    assert sides(note, "The left L5 nerve root is compressed.")["side_agreement"] == 1.0
    assert sides(note, "Compression of the right S1 root.")["side_agreement"] == 0.0
    assert sides("Pain down both legs.", "Left L5 root impingement.")["side_agreement"] == 1.0
    assert sides(note, "Bilateral L5 root compression.")["side_agreement"] == 1.0


def test_the_encoding_carries_the_sides_and_an_older_bundle_encodes_as_before():
    frame = pd.DataFrame(
        {
            "age": [50, 61],
            "clinical_note": ["Pain down the left leg.", None],
            "imaging_report": ["Left L5 root compression.", "Right S1 root compression."],
        }
    )
    encoding = FeatureEncoding.fit(frame)
    arrays = encoding.encode(frame)
    at = {name: j for j, name in enumerate(encoding.numeric)}
    assert arrays["numeric_missing"][:, at["side_agreement"]].tolist() == [0.0, 1.0]
    assert arrays["numeric_missing"][:, at["report_side_left"]].tolist() == [0.0, 0.0]
    # a features.json written before the sides existed lists only the contract's fields
    old = FeatureEncoding.from_dict({**encoding.to_dict(), "numeric": list(NUMERIC_FIELDS)})
    assert old.encode(frame)["numeric"].shape == (2, len(NUMERIC_FIELDS))
    np.testing.assert_array_equal(
        old.encode(frame)["numeric"], arrays["numeric"][:, : len(NUMERIC_FIELDS)]
    )
