"""Tests for the synthetic MRI key image (spinecast.datasets.synth.image).

    cd /work/main && .venv/bin/pytest tests/datasets/test_image.py -q

Findings are checked by rendering two states that differ only in that finding from generators with
the same seed (same patient build, same noise) and measuring pixels where the finding should be.
"""

import hashlib
import io
import itertools
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from spinecast.datasets.synth.image import (
    IMAGE_SIZE,
    LEVELS,
    landmarks,
    png_bytes,
    render_mri,
    save_png,
)

SEEDS = range(6)


def make_state(**overrides) -> dict:
    """One full hidden-state row (datasets/synth/STATE.md) with plausible values, no findings."""
    state = {
        "patient_id": "P-000001",
        "age": 52,
        "sex": "female",
        "bmi": 27.5,
        "smoking": "never",
        "diabetes": False,
        "depression": False,
        "anxiety": False,
        "workers_comp": False,
        "opioid_use": False,
        "prior_spine_surgery": False,
        "prior_surgery_level": "",
        "asa_class": 2,
        "symptom_duration_weeks": 30.0,
        "baseline_odi": 42.0,
        "back_pain_nrs": 5,
        "leg_pain_nrs": 7,
        "diagnosis": "disc_herniation",
        "level": "L4-L5",
        "root": "L5",
        "leg_side": "left",
        "leg_dominant": True,
        "claudication": False,
        "slr_positive": True,
        "slr_angle": 45,
        "motor_deficit": False,
        "motor_grade": 5,
        "sensory_deficit": False,
        "reflex_diminished": False,
        "fear_avoidance": False,
        "unrealistic_expectations": False,
        "tried_pt": True,
        "tried_esi": False,
        "tried_nsaids": True,
        "unstable_slip": False,
        "translation_mm": 0.0,
        "has_mri": True,
        "herniation": "none",
        "herniation_side": "",
        "root_compression": False,
        "compression_side": "",
        "concordant": False,
        "central_stenosis": "none",
        "foraminal_stenosis": False,
        "foraminal_side": "",
        "listhesis_grade": 0,
        "modic": 0,
        "degeneration": [1, 1, 1, 1, 1],
        "incidental_bulges": [],
    }
    return {**state, **overrides}


def render(seed: int, **overrides) -> np.ndarray:
    return render_mri(make_state(**overrides), np.random.default_rng(seed))


def where(seed: int, level: str, **overrides) -> dict:
    return landmarks(make_state(level=level, **overrides), np.random.default_rng(seed))[level]


def profile(img: np.ndarray, centre, direction, ts) -> np.ndarray:
    """Nearest-pixel samples of img along centre + t * direction, (row, col) coordinates."""
    pts = np.asarray(centre) + np.outer(ts, direction)
    rows, cols = np.clip(np.rint(pts).astype(int), 0, IMAGE_SIZE - 1).T
    return img[rows, cols].astype(float)


def canal_pixels(img: np.ndarray, lm: dict, threshold: float) -> int:
    """Bright (CSF) pixels across the canal at the level: three lines along the AP direction."""
    ts, canal, caudal = np.arange(-7, 8), np.asarray(lm["canal"]), np.asarray(lm["caudal"])
    lines = [profile(img, canal + k * caudal, lm["posterior"], ts) for k in (-1, 0, 1)]
    return int(sum((line > threshold).sum() for line in lines))


def csf_threshold(img: np.ndarray, lm: dict) -> float:
    """Between CSF and disc or nerve: 70 % of the brightest canal sample without findings."""
    return 0.7 * profile(img, lm["canal"], lm["posterior"], np.arange(-7, 8)).max()


def best_shift(moved: np.ndarray, still: np.ndarray) -> int:
    """The shift s (px) minimising the squared difference of moved[t] and still[t - s]."""
    span = range(-14, 6)
    cost = [np.mean((moved[20:-20] - np.roll(still, s)[20:-20]) ** 2) for s in span]
    return list(span)[int(np.argmin(cost))]


def test_shape_and_dtype():
    img = render(0)
    assert img.shape == (IMAGE_SIZE, IMAGE_SIZE) and img.dtype == np.uint8
    assert 20 < img.mean() < 200 and img.max() > 200  # bright CSF and fat, not blank


def test_same_seed_same_image_and_png_bytes():
    state = make_state(
        herniation="extrusion", herniation_side="central", modic=1, listhesis_grade=1
    )
    a = render_mri(state, np.random.default_rng(42))
    np.random.seed(7)  # the global numpy state must not matter
    b = render_mri(state, np.random.default_rng(42))
    assert np.array_equal(a, b)
    assert png_bytes(a) == png_bytes(b)


def test_png_is_standard_and_has_no_metadata(tmp_path):
    img = render(3)
    data = png_bytes(img)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), img)
    save_png(img, tmp_path / "key.png")
    assert (tmp_path / "key.png").read_bytes() == data
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    assert chunks == [b"IHDR", b"IDAT", b"IEND"]  # no time, text or other chunks


def test_different_generators_give_different_patients():
    imgs = [render(seed) for seed in range(8)]
    for a, b in itertools.combinations(imgs, 2):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    discs = np.array([where(seed, "L4-L5")["disc"] for seed in range(8)])
    assert discs.std(axis=0).max() > 1.5  # the spine sits in different places


@pytest.mark.parametrize("level", ["L3-L4", "L4-L5", "L5-S1"])
def test_stenosis_narrows_the_canal_at_the_level(level):
    for seed in SEEDS:
        lm = where(seed, level)
        base = render(seed, level=level)
        threshold = csf_threshold(base, lm)
        widths = [
            canal_pixels(render(seed, level=level, central_stenosis=grade), lm, threshold)
            for grade in ("none", "mild", "moderate", "severe")
        ]
        assert widths[0] >= 12  # about 8 px of CSF on each of three lines
        assert widths[3] <= 0.45 * widths[0], widths
        assert widths[0] >= widths[1] >= widths[2] >= widths[3], widths


@pytest.mark.parametrize("level", ["L3-L4", "L4-L5", "L5-S1"])
def test_herniation_fills_the_canal_and_extrusion_more(level):
    for seed in SEEDS:
        lm = where(seed, level)
        base = render(seed, level=level)
        threshold = csf_threshold(base, lm)
        none, protrusion, extrusion = (
            canal_pixels(
                render(seed, level=level, herniation=kind, herniation_side="central"), lm, threshold
            )
            for kind in ("none", "protrusion", "extrusion")
        )
        assert extrusion < protrusion < none, (none, protrusion, extrusion)
        assert extrusion <= 0.75 * none


def test_findings_change_pixels_only_near_the_level():
    for seed, level in itertools.product(SEEDS, ["L3-L4", "L4-L5", "L5-S1"]):
        lm = where(seed, level)
        base = render(seed, level=level).astype(int)
        findings = (
            {"herniation": "extrusion", "herniation_side": "central"},
            {"central_stenosis": "severe"},
        )
        for finding in findings:
            diff = np.abs(render(seed, level=level, **finding).astype(int) - base)
            rows, cols = np.nonzero(diff)
            dist = np.hypot(rows - lm["canal"][0], cols - lm["canal"][1])
            assert len(rows) > 10 and dist.max() < 22, (finding, dist.max())


@pytest.mark.parametrize("level", ["L3-L4", "L4-L5", "L5-S1"])
def test_degenerated_disc_is_darker(level):
    i = LEVELS.index(level)
    for seed in SEEDS:
        healthy, worn = [1] * 5, [1] * 5
        healthy[i], worn[i] = 0, 3
        # The brightest pixel along the disc's mid-plane: the nucleus, whatever the disc's height.
        peaks = []
        for grades in (healthy, worn):
            lm = where(seed, level, degeneration=grades)
            img = render(seed, level=level, degeneration=grades)
            peaks.append(profile(img, lm["disc"], lm["posterior"], np.arange(-5, 6)).max())
        assert peaks[1] < 0.5 * peaks[0], peaks


def test_degenerated_disc_is_thinner():
    heights = [where(0, "L4-L5", degeneration=[1, 1, 1, g, 1])["disc_height"] for g in range(4)]
    assert heights == sorted(heights, reverse=True) and heights[3] < 0.5 * heights[0]


@pytest.mark.parametrize("level", ["L3-L4", "L4-L5", "L5-S1"])
def test_slip_moves_the_upper_vertebra_forward(level):
    ts = np.arange(-30, 50)
    for seed in SEEDS:
        lm = where(seed, level)
        base = render(seed, level=level)
        shifts = []
        for grade in (1, 2):
            slipped = render(seed, level=level, listhesis_grade=grade)
            upper = best_shift(
                profile(slipped, lm["upper_body"], lm["posterior"], ts),
                profile(base, lm["upper_body"], lm["posterior"], ts),
            )
            lower = best_shift(
                profile(slipped, lm["lower_body"], lm["posterior"], ts),
                profile(base, lm["lower_body"], lm["posterior"], ts),
            )
            assert lower == 0  # the vertebra below stays put
            shifts.append(upper)
        # Anterior is -posterior: about 15 % (grade 1) and 40 % (grade 2) of a ~20 px body depth.
        assert -6 <= shifts[0] <= -2 and -11 <= shifts[1] <= shifts[0] - 3, shifts


@pytest.mark.parametrize("level", ["L3-L4", "L4-L5", "L5-S1"])
def test_modic_brightens_the_endplates(level):
    for seed in SEEDS:
        lm = where(seed, level)
        # Marrow 2.5 px beyond each endplate, along lines parallel to it.
        step = (lm["disc_height"] / 2 + 2.5) * np.asarray(lm["caudal"])
        centres = [np.asarray(lm["disc"]) + side * step for side in (-1, 1)]
        none, type1, type2 = (
            np.mean(
                [
                    profile(
                        render(seed, level=level, modic=m), c, lm["posterior"], np.arange(-5, 6)
                    )
                    for c in centres
                ]
            )
            for m in (0, 1, 2)
        )
        assert type1 > none + 25 and type2 > none + 10, (none, type1, type2)


def test_every_finding_combination_renders():
    kinds = itertools.product(
        ["none", "bulge", "protrusion", "extrusion"],
        ["none", "mild", "moderate", "severe"],
        [0, 1, 2],
        [0, 1, 2],
        ["L3-L4", "L4-L5", "L5-S1"],
        ["left", "central"],
    )
    for i, (hern, sten, slip, modic, level, side) in enumerate(kinds):
        img = render(
            i,
            herniation=hern,
            central_stenosis=sten,
            listhesis_grade=slip,
            modic=modic,
            level=level,
            herniation_side=side,
            degeneration=[i % 4, 3, 0, 2, 1],
            incidental_bulges=["L2-L3"],
            age=18 + i % 78,
            bmi=16 + i % 40,
        )
        assert img.shape == (IMAGE_SIZE, IMAGE_SIZE) and img.dtype == np.uint8


def test_numpy_typed_rows_from_pandas_render_the_same():
    plain = make_state(modic=1, listhesis_grade=2, degeneration=[0, 1, 2, 3, 1])
    typed = {
        **plain,
        "modic": np.int64(1),
        "listhesis_grade": np.int64(2),
        "age": np.int64(52),
        "degeneration": np.array([0, 1, 2, 3, 1]),
        "bmi": np.float64(27.5),
        "has_mri": np.bool_(True),
    }
    a, b = (render_mri(state, np.random.default_rng(1)) for state in (plain, typed))
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "field, value",
    [
        ("level", "L6-S1"),
        ("herniation", "sequestration"),
        ("central_stenosis", "critical"),
        ("listhesis_grade", 3),
        ("degeneration", [0, 1, 2]),
        ("incidental_bulges", ["C5-C6"]),
    ],
)
def test_bad_state_is_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        render_mri(make_state(**{field: value}), np.random.default_rng(0))


def test_same_bytes_in_a_fresh_process_with_another_hash_seed():
    state = make_state(herniation="bulge", incidental_bulges=["L2-L3", "L3-L4"])
    code = (
        "import hashlib, numpy as np; from spinecast.datasets.synth.image import png_bytes, "
        f"render_mri; s = {state!r}; "
        "print(hashlib.sha256(png_bytes(render_mri(s, np.random.default_rng(5)))).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    here = hashlib.sha256(png_bytes(render_mri(state, np.random.default_rng(5)))).hexdigest()
    assert digests == {here + "\n"}
