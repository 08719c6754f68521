"""MRI key image: a synthetic T2-weighted mid-sagittal lumbar MRI drawn from one patient's hidden state.

    python -c "from spinecast.datasets.synth import image; image.example_grid('/tmp/mri_examples.png')"

The image is a view of the state (datasets/synth/STATE.md), like the report: it shows disc height and
signal (`degeneration`), a slip (`listhesis_grade`), a posterior disc herniation and central canal
narrowing at `level`, and Modic endplate change. Side, foramina and roots cannot be seen on a
mid-sagittal slice, so they are not drawn. Anterior is on the left, the head at the top.

Anatomy is drawn in a curved spine frame: u is arc length (px) along the anterior surface of the
vertebral bodies, caudal positive, 0 at the middle of the L3-L4 disc; v is depth (px) behind that
surface. The frame follows two circular arcs (the lordosis), so endplates come out radial and discs
wedge shaped, taller in front, as in a real lordotic spine. Whatever varies along the spine is
tabulated once per image on a fine u grid and looked up per pixel; with no per-pixel Python and few
full-image numpy operations, a render plus PNG encoding takes about 2 ms on one core.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np

IMAGE_SIZE = 128
LEVELS = ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")

# Eight bodies are drawn so that no level sits at the image edge: T12 on top, S2 (standing for the
# rest of the sacrum) at the bottom. Disc j lies between body j and body j + 1; LEVELS[i] is disc i + 1.
_N_BODIES, _ANCHOR_DISC = 8, 3  # the frame's origin is the L3-L4 disc, the apex of the lordosis
_LUT_STEP, _LUT_SIZE = 8, 2560  # tables along u at 1/8 px over [-160, 160) px

# Tissue signal before coil gain and noise (0..255). T2-weighted fast spin echo: fluid and fat are
# bright, marrow intermediate (brighter with age as it turns fatty), cortex, ligament and flowing
# blood dark.
_AIR, _SKIN, _FAT, _MUSCLE, _ABDOMEN = 3.0, 95.0, 170.0, 62.0, 92.0
_CSF, _NERVE, _LIGAMENT, _CORTEX = 235.0, 112.0, 42.0, 26.0
_ANNULUS, _HERNIA, _FLOW_VOID, _PREVERTEBRAL_FAT = 68.0, 118.0, 30.0, 150.0

# Per degeneration grade 0..3 (Pfirrmann-like): nucleus signal, disc height factor, margin bulge (px).
_NUCLEUS = np.array([215.0, 160.0, 105.0, 60.0])
_DISC_HEIGHT = np.array([1.0, 0.8, 0.6, 0.38])
_DISC_BULGE = np.array([0.4, 0.8, 1.2, 1.6])
_BULGE_EXTRA = 1.4  # px of broad posterior bulge at a bulging disc (the finding or incidental)

# Fraction of the canal's AP diameter lost at the level: an hourglass, mostly ligamentum flavum and
# facets from behind, partly disc from in front.
_STENOSIS = {"none": 0.0, "mild": 0.3, "moderate": 0.55, "severe": 0.8}
# Focal herniation: (depth into the canal as a fraction of its diameter, craniocaudal half-length in
# disc half-heights). A protrusion is broad and shallow, an extrusion deeper and longer (Fardon 2014).
_HERNIATION = {"none": (0.0, 0.0), "bulge": (0.0, 0.0), "protrusion": (0.4, 1.4), "extrusion": (0.7, 2.4)}
_MODIC_GAIN = (0.0, 70.0, 35.0)  # type 1 = oedema (T2 bright), type 2 = fatty marrow (mildly bright)

_AXIS = np.arange(IMAGE_SIZE, dtype=np.float32)
# Standard normal quantiles: noise is drawn as indices into this table, 4x faster than
# rng.standard_normal here, and still from the caller's rng only.
_GAUSS = np.array([NormalDist().inv_cdf((i + 0.5) / 4096) for i in range(4096)], dtype=np.float32)


def _upsampler(n: int) -> np.ndarray:
    """(IMAGE_SIZE, n) bilinear interpolation matrix: A @ G @ A.T turns an n x n grid into a smooth field."""
    pos = np.linspace(0, n - 1, IMAGE_SIZE)[:, None]
    return np.clip(1 - np.abs(pos - np.arange(n)[None, :]), 0, 1).astype(np.float32)


_UP24, _UP4 = _upsampler(24), _upsampler(4)


@dataclass(frozen=True)
class _Anatomy:
    """Everything random about one image (patient build and scanner), drawn in _sample_anatomy."""

    scale: float  # overall size of the spine in the field of view
    x0: float  # column of the anterior edge of the L3-L4 disc (the frame's origin)
    y0: float  # row of the same point
    tilt: float  # rad, rotation of the whole spine
    radius: float  # px, radius of the lordotic arc above `bend` (smaller = more lordosis)
    radius_low: float  # px, radius below it
    bend: float  # u where the curve tightens (about L4)
    body_h: np.ndarray  # (8,) px body heights
    depth: np.ndarray  # (8,) px anteroposterior body depths
    disc_h: np.ndarray  # (7,) px heights of the discs if healthy
    canal: float  # px AP diameter of the canal
    spine_len: float  # px length of the spinous processes
    spine_slope: float  # caudal slant of the spinous processes (du per dv)
    conus: float  # 0..1, conus tip from mid-L1 down to the L1-L2 disc
    marrow: float  # additive marrow signal
    fat: float  # factor on the BMI-driven subcutaneous fat thickness
    gain: float  # overall receive gain
    bias: float  # posterior-to-anterior coil falloff
    sigma: float  # noise standard deviation
    blur: float  # weight of each neighbour in the 3-tap blur
    hernia_size: float
    hernia_shift: float  # -1..1, craniocaudal migration of an extrusion
    slip: float  # jitter on the slip fraction
    nucleus: float  # jitter on nucleus signal


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    # One fixed-size draw whatever the findings, so two states rendered from the same seed differ
    # only where their findings differ (the tests, and any counterfactual view, rely on this).
    r = rng.random(47)

    def span(i: int, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(r[i])

    sc = span(0, 0.9, 1.06)
    trend = 1.0 + 0.035 * (np.arange(_N_BODIES) - 4)  # lower lumbar bodies are deeper
    trend[7] = 0.8  # the sacrum tapers
    body_h = sc * span(1, 12.5, 14.0) * (0.95 + 0.1 * r[24:32])
    body_h[7] *= 2.0  # S2 reaches past the bottom edge
    return _Anatomy(
        scale=sc, x0=span(2, 34, 46), y0=span(3, 60, 68), tilt=span(4, -0.12, 0.12),
        radius=span(5, 250, 450), radius_low=span(22, 110, 160), bend=sc * span(23, 0, 12),
        body_h=body_h, depth=sc * span(6, 18, 21) * trend * (0.96 + 0.08 * r[32:40]),
        disc_h=sc * span(7, 5.0, 6.0) * (0.9 + 0.2 * r[40:47]), canal=sc * span(8, 7.5, 10.5),
        spine_len=sc * span(9, 14, 19), spine_slope=span(10, 0.2, 0.45), conus=span(11, 0, 1),
        marrow=span(12, -12, 12), fat=span(13, 0.8, 1.2), gain=span(14, 0.82, 1.12),
        bias=span(15, 0.1, 0.35), sigma=span(16, 3, 8), blur=span(17, 0.12, 0.25),
        hernia_size=span(18, 0.85, 1.15), hernia_shift=span(19, -1, 1),
        slip=span(20, -0.04, 0.04), nucleus=span(21, -15, 15),
    )


@dataclass(frozen=True)
class _Layout:
    """Where things sit along the spine for one state, and per-u lookup tables for the renderer."""

    centers: np.ndarray  # (8,) u of the body centres
    mids: np.ndarray  # (7,) u of the disc mid-planes
    half: np.ndarray  # (7,) disc half-heights
    shift: np.ndarray  # (8,) px each body is slipped anteriorly
    level: int  # disc index of s["level"]
    lut: np.ndarray  # see _tables


def _layout(s: dict, an: _Anatomy) -> _Layout:
    grades = np.array([s["degeneration"][0], *s["degeneration"], 3])  # T12-L1 ages like L1-L2
    disc_h = an.disc_h * _DISC_HEIGHT[grades]
    disc_h[6] = 1.5 * an.scale  # S1-S2 is a thin remnant
    lengths = np.empty(2 * _N_BODIES - 1)
    lengths[0::2], lengths[1::2] = an.body_h, disc_h
    edges = np.concatenate([[0.0], np.cumsum(lengths)])  # body i spans edges[2i]..edges[2i + 1]
    edges -= (edges[2 * _ANCHOR_DISC + 1] + edges[2 * _ANCHOR_DISC + 2]) / 2
    tops, bots = edges[0::2], edges[1::2]
    j = LEVELS.index(s["level"]) + 1
    # Meyerding grade g is a slip of 25 (g - 1) to 25 g % of the body's depth: aim inside the band.
    grade = int(s["listhesis_grade"])
    slip = (0.25 * grade - 0.07 + an.slip) * an.depth[j] if grade else 0.0
    shift = np.where(np.arange(_N_BODIES) <= j, slip, 0.0)  # the upper vertebra carries the spine above
    geo = dict(centers=(tops + bots) / 2, mids=(bots[:-1] + tops[1:]) / 2, half=(tops[1:] - bots[:-1]) / 2)
    return _Layout(shift=shift, level=j, lut=_tables(s, an, edges, shift, grades, j, **geo), **geo)


# Rows of the per-image lookup table; each is a function of u (see _tables).
_ROWS = {name: i for i, name in enumerate(
    ("body_sd", "depth", "shift", "disc_du", "nucleus", "ext_ant", "ext_post", "narrow", "modic", "nerve", "aorta"))}
_UG = (np.arange(_LUT_SIZE) + 0.5) / _LUT_STEP - _LUT_SIZE / (2 * _LUT_STEP)  # u of each table entry


def _tables(s, an, edges, shift, grades, j, centers, mids, half) -> np.ndarray:
    """(len(_ROWS), _LUT_SIZE) float32: everything that varies along the spine, sampled on _UG.
    Most rows are piecewise linear, built by np.interp from knots (few numpy calls: it runs per image)."""
    k = np.searchsorted(centers, _UG) - 1
    np.clip(k, 0, _N_BODIES - 2, out=k)  # the disc nearest each u
    bulging = list(s.get("incidental_bulges", ())) + ([s["level"]] if s["herniation"] == "bulge" else [])
    extra = [0.0] + [_BULGE_EXTRA * (lv in bulging) for lv in LEVELS] + [0.0]
    nucleus = _NUCLEUS[grades] + an.nucleus
    nucleus[6] = _ANNULUS  # the S1-S2 remnant has no nucleus
    bulge = _DISC_BULGE[grades]
    mid, hd, nuc, ext_ant, ext_post = np.array([mids, half, nucleus, bulge, bulge + extra])[:, k]
    du = (_UG - mid) / hd
    prof = np.clip(1 - du * du, 0, 1)  # discs bulge most at mid-height
    c, m, hh, h = centers.tolist(), mids.tolist(), (an.body_h / 2).tolist(), half.tolist()
    # Signed distance to the nearest body along u: -half-height at its centre, +half-disc between.
    sd_knots = [c[0] - 500] + [x for i in range(7) for x in (c[i], m[i])] + [c[7], c[7] + 500]
    sd_vals = [500 - hh[0]] + [x for i in range(7) for x in (-hh[i], h[i])] + [-hh[7], 500 - hh[7]]
    sc, mj, hj, f = an.scale, m[j], h[j], _STENOSIS[s["central_stenosis"]]
    reach, band = hj + 3 * sc, hj + 3.5 * sc  # of the stenosis hourglass; of Modic change into the bodies
    tip = c[1] + an.conus * (m[1] - c[1])  # of the conus
    rows = [
        np.interp(_UG, sd_knots, sd_vals),
        np.interp(_UG, edges, np.repeat(an.depth, 2)),  # AP depth; linear across discs
        np.interp(_UG, edges, np.repeat(shift, 2)),
        du, nuc, ext_ant * prof, ext_post * prof,
        # Canal narrowing: an hourglass at the level; the thecal sac ends at S2.
        np.interp(_UG, [mj - reach, mj - hj / 2, mj + hj / 2, mj + reach, c[7], c[7] + 4 * sc], [0, f, f, 0, 0, 1]),
        _MODIC_GAIN[s["modic"]] * np.interp(_UG, [mj - band - 1, mj - band, mj + band, mj + band + 1], [0, 1, 1, 0]),
        np.interp(_UG, [tip - 5 * sc, tip], [0.3 * an.canal, 0.1 * an.canal]),  # conus, then cauda equina
        np.interp(_UG, [c[4] - 2, c[4]], [1, 0]),  # the aorta bifurcates at L4
    ]
    return np.array(rows, dtype=np.float32)


def _index(u: np.ndarray) -> np.ndarray:
    """Table index of each u; out-of-range indices are clipped by take(mode="clip")."""
    return (u * _LUT_STEP + _LUT_SIZE / 2).astype(np.intp)


@dataclass(frozen=True)
class _Arc:
    """A circular arc of the spine's anterior surface, starting at u0 at point `start` (x, y), with
    posterior normal n and caudal tangent t there; its centre, start + r n, lies behind the patient."""

    u0: float
    start: np.ndarray
    n: np.ndarray
    t: np.ndarray
    r: float

    def at(self, u, v) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y) of frame points (u, v), scalars or arrays, with the unit posterior and caudal
        directions there; each has a trailing axis of 2."""
        th = (np.asarray(u, dtype=float) - self.u0) / self.r
        c, s = np.cos(th)[..., None], np.sin(th)[..., None]
        posterior, caudal = c * self.n - s * self.t, s * self.n + c * self.t
        depth = self.r - np.asarray(v, dtype=float)[..., None]
        return self.start + self.r * self.n - depth * posterior, posterior, caudal

    def coords(self, rows: slice) -> tuple[np.ndarray, ...]:
        """Per pixel of the rows: u, v, and the offsets dt, dn from the centre along t and n (dt > 0
        caudal of the start). dn and dt are one add each, of a per-row and a per-column term."""
        cx, cy = self.start + self.r * self.n
        x, y = _AXIS - np.float32(cx), _AXIS[rows] - np.float32(cy)
        (nx, ny), (tx, ty), r = self.n.astype(np.float32), self.t.astype(np.float32), np.float32(self.r)
        dn, dt = (x * nx)[None, :] + (y * ny)[:, None], (x * tx)[None, :] + (y * ty)[:, None]
        u = np.arctan2(dt, -dn)
        u *= r
        u += np.float32(self.u0)
        return u, r - np.sqrt(dn * dn + dt * dt), dt, dn


def _arcs(an: _Anatomy) -> tuple[_Arc, _Arc]:
    """The lordosis as two arcs meeting at u = an.bend: gentle above, tight below, as real lumbar
    lordosis is concentrated at L4-S1."""
    n = np.array([np.cos(an.tilt), np.sin(an.tilt)])
    upper = _Arc(0.0, np.array([an.x0, an.y0]), n, np.array([-n[1], n[0]]), an.radius)
    return upper, _Arc(an.bend, *upper.at(an.bend, 0.0), an.radius_low)


def _to_pixel(an: _Anatomy, u: float, v: float) -> tuple[tuple, tuple, tuple]:
    """(row, col) of frame point (u, v), with the unit posterior and caudal (drow, dcol) there."""
    upper, lower = _arcs(an)
    point, posterior, caudal = (lower if u > an.bend else upper).at(u, v)
    return tuple(point[::-1].tolist()), tuple(posterior[::-1].tolist()), tuple(caudal[::-1].tolist())


@dataclass
class _Pixels:
    """Per-pixel coordinates. v has the slip applied (where the spine's own anatomy sits); w = v - depth
    is depth behind the posterior surface of the bodies; v_soft is unslipped depth with half the upper
    lordosis, which the back's fat and skin follow. table(name) looks a _tables row up at each pixel."""

    u: np.ndarray
    iu: np.ndarray
    lut: np.ndarray
    v_soft: np.ndarray
    v: np.ndarray = None
    depth: np.ndarray = None
    w: np.ndarray = None
    cache: dict = field(default_factory=dict)

    def table(self, name: str) -> np.ndarray:
        if name not in self.cache:
            self.cache[name] = self.lut[_ROWS[name]].take(self.iu, mode="clip")
        return self.cache[name]


def _pixels(an: _Anatomy, geo: _Layout) -> _Pixels:
    upper, lower = _arcs(an)
    u, v, dt, dn = upper.coords(slice(None))
    v_soft = dn + np.float32(upper.r) - dt * dt / np.float32(4 * upper.r)
    # Below the radial line where the arcs meet (both centres lie on it) the lower arc holds.
    (x0, y0), slope = lower.start, lower.n[1] / lower.n[0]
    first = int(np.clip(y0 + min(-x0 * slope, (IMAGE_SIZE - 1 - x0) * slope), 0, IMAGE_SIZE))
    u2, v2, dt2, _ = lower.coords(slice(first, None))
    low = dt2 > 0
    u[first:] += low * (u2 - u[first:])  # arithmetic select: np.where is several times slower here
    v[first:] += low * (v2 - v[first:])
    px = _Pixels(u=u, iu=_index(u), lut=geo.lut, v_soft=v_soft)
    px.v = v + px.table("shift")  # a slipped vertebra sits further forward: its anatomy is deeper in v
    px.depth = px.table("depth")
    px.w = px.v - px.depth
    return px


def _paint(img: np.ndarray, alpha: np.ndarray, value) -> None:
    """Composite a tissue over the image; alpha in [0, 1] gives partial-volume edges."""
    img += alpha * (value - img)


def _alpha(sd: np.ndarray) -> np.ndarray:
    """Coverage of a pixel by a shape from its signed distance (px, negative inside)."""
    return np.clip(0.5 - sd, 0.0, 1.0)


def _box_sd(su: np.ndarray, sv: np.ndarray, r: float) -> np.ndarray:
    """Signed distance of a box from its distances along u and v, corners cut at 45 degrees r px
    back: cheaper than rounding them, and alike once blurred."""
    return np.maximum(np.maximum(su, sv), (su + sv + r) * np.float32(0.7071))


def _paint_bone(img: np.ndarray, sd: np.ndarray, marrow) -> None:
    _paint(img, _alpha(sd), _CORTEX)
    _paint(img, _alpha(sd + 1.1), marrow)  # the dark cortical rim is about a pixel thick


def _soft_tissue(s: dict, an: _Anatomy, px: _Pixels, tex: np.ndarray) -> np.ndarray:
    """Abdomen in front of the spine; paraspinal muscle, subcutaneous fat, skin and air behind it."""
    img = _ABDOMEN + 38 * tex[0]
    img += (px.w > -0.5 * px.depth) * (_MUSCLE + 8 * tex[1] - img)
    back = float(an.depth[4] + an.canal + an.spine_len) + 5 * an.scale  # muscle ends past the spinous tips
    fat = an.fat * an.scale * float(np.clip(4 + 1.1 * (float(s["bmi"]) - 18), 3, 40))
    for edge, value in ((back, _FAT), (back + fat, _SKIN), (back + fat + 1.5 * an.scale, _AIR)):
        _paint(img, _alpha(edge - px.v_soft), value)
    return img


def _prevertebral(img: np.ndarray, an: _Anatomy, px: _Pixels) -> None:
    """Prevertebral fat, then the aorta's flow void, lying on the front of the spine."""
    _paint(img, _alpha(np.maximum(-3 * an.scale - px.v, px.v)), _PREVERTEBRAL_FAT)
    aorta = _alpha(np.maximum(-10 * an.scale - px.v, px.v + 3 * an.scale)) * px.table("aorta")
    _paint(img, aorta, _FLOW_VOID)


def _canal_and_arches(img: np.ndarray, an: _Anatomy, px: _Pixels, marrow: np.ndarray) -> None:
    sc, back = an.scale, an.scale + an.canal  # the canal spans w in [sc, back], behind the PLL
    # Ligament sheath: PLL in front, ligamentum flavum behind (the laminae cover it at body levels).
    _paint(img, _alpha(np.maximum(-px.w, px.w - back - 2.5 * sc)), _LIGAMENT)
    # Laminae and spinous processes: the bodies' u-extent, slanting caudally with depth.
    u_arch = px.u - an.spine_slope * (px.w - back)
    su = px.lut[_ROWS["body_sd"]].take(_index(u_arch), mode="clip") + sc
    sv = np.maximum(back - 0.5 - px.w, px.w - back - an.spine_len)
    _paint_bone(img, _box_sd(su, sv, 2.5 * sc), marrow - 10)
    # CSF, narrowed at a stenotic level mostly from behind (ligamentum flavum, facets).
    narrow = px.table("narrow") * an.canal  # reaches the full diameter where the thecal sac ends
    canal = _alpha(np.maximum(sc + 0.3 * narrow - px.w, px.w - back + 0.7 * narrow))
    _paint(img, canal, _CSF)
    # Conus or cauda equina, lying dependent (posterior) in a supine patient.
    nerve = _alpha(np.abs(px.w - sc - 0.6 * an.canal) - px.table("nerve") - 1.0)
    _paint(img, nerve * canal, _NERVE)


def _discs(img: np.ndarray, s: dict, px: _Pixels) -> None:
    su = -0.7 - px.table("body_sd")  # overlap the endplates; the bodies are drawn on top
    disc = _alpha(np.maximum(su, np.maximum(-px.table("ext_ant") - px.v, px.w - px.table("ext_post"))))
    _paint(img, disc, _ANNULUS)
    du, ratio = px.table("disc_du"), px.v / px.depth - 0.5
    nucleus = np.clip(2 - 4 * du * du - 13.8 * ratio * ratio, 0.0, 1.0) * disc
    if float(s["age"]) >= 35:  # the intranuclear cleft of adult discs, a thin dark line at mid-height
        nucleus *= 1 - 0.35 * np.clip(1 - 5 * np.abs(du), 0.0, 1.0)
    _paint(img, nucleus, px.table("nucleus"))


def _herniation(img: np.ndarray, s: dict, an: _Anatomy, geo: _Layout, px: _Pixels) -> None:
    frac, length = _HERNIATION[s["herniation"]]
    if not frac:
        return
    # A paracentral herniation lies partly off the midline slice, so less of it shows.
    size = an.hernia_size * (1.0 if s.get("herniation_side") in ("central", "") else 0.8)
    half = float(geo.half[geo.level])
    depth, half_len, centre = frac * an.canal * size, length * half * size + 1.0, float(geo.mids[geo.level])
    if s["herniation"] == "extrusion":  # extruded material may migrate up or down behind a body
        centre += an.hernia_shift * 1.5 * half
    e = np.sqrt(((px.u - centre) / half_len) ** 2 + (px.w / depth) ** 2)
    _paint(img, _alpha((e - 1) * min(half_len, depth)) * np.clip(px.w + 1.5, 0.0, 1.0), _HERNIA)


def _bodies(img: np.ndarray, an: _Anatomy, px: _Pixels, marrow: np.ndarray, modic: int) -> None:
    su = px.table("body_sd")
    waist = np.clip(su * (-1.6 * an.scale / float(an.body_h[4])), 0.0, 0.8 * an.scale)  # concave front
    sd = _box_sd(su, np.maximum(waist - px.v, px.w), 2.0 * an.scale)
    _paint_bone(img, sd, marrow + px.table("modic") if modic else marrow)  # a band along both endplates


def _draw(s: dict, an: _Anatomy, geo: _Layout, tex: np.ndarray) -> np.ndarray:
    """The noiseless image: tissue signal before coil shading, blur and noise."""
    px = _pixels(an, geo)
    img = _soft_tissue(s, an, px, tex)
    # Marrow turns fatty, hence T2-brighter, with age.
    marrow = 10 * tex[1] + (95 + 0.8 * min(max(float(s["age"]) - 20, 0), 70) + an.marrow)
    _prevertebral(img, an, px)
    _canal_and_arches(img, an, px, marrow)
    _discs(img, s, px)
    _herniation(img, s, an, geo, px)
    _bodies(img, an, px, marrow, s["modic"])
    return img


def _blur(img: np.ndarray, w: float) -> np.ndarray:
    """Separable 3-tap [w, 1 - 2w, w] blur, edges replicated: the scanner's point-spread function."""
    out = img * (1 - 2 * w)
    out[1:] += w * img[:-1]
    out[:-1] += w * img[1:]
    out[0] += w * img[0]
    out[-1] += w * img[-1]
    res = out * (1 - 2 * w)
    res[:, 1:] += w * out[:, :-1]
    res[:, :-1] += w * out[:, 1:]
    res[:, 0] += w * out[:, 0]
    res[:, -1] += w * out[:, -1]
    return res


def _acquire(img: np.ndarray, an: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Coil shading, blur and Rician noise, quantised to uint8."""
    shading = _UP4 @ rng.standard_normal((4, 4)).astype(np.float32) @ _UP4.T
    # The receive coil is behind the patient (right of the image): signal falls off anteriorly.
    falloff = 1 + an.bias / IMAGE_SIZE * (_AXIS - IMAGE_SIZE / 2)  # per column
    img *= an.gain * (falloff + 0.05 * shading)
    img = _blur(img, an.blur)
    draws = np.frombuffer(rng.bytes(4 * IMAGE_SIZE * IMAGE_SIZE), np.uint16) & (len(_GAUSS) - 1)
    noise = _GAUSS.take(draws.astype(np.intp)).reshape(2, IMAGE_SIZE, IMAGE_SIZE)
    noise *= np.float32(an.sigma)
    img += noise[0]
    img = np.sqrt(img * img + noise[1] * noise[1])  # magnitude of complex data: Rician
    return np.minimum(img + 0.5, 255.0).astype(np.uint8)


def _check(s: dict) -> None:
    """Validate the state fields the image draws; say what was given and what was expected."""
    expected = {
        "level": LEVELS, "herniation": tuple(_HERNIATION), "central_stenosis": tuple(_STENOSIS),
        "listhesis_grade": (0, 1, 2), "modic": (0, 1, 2),
    }
    for key, allowed in expected.items():
        if s.get(key) not in allowed:
            raise ValueError(f"state field {key!r} must be one of {allowed}; got {s.get(key)!r}")
    deg = s.get("degeneration")
    if deg is None or len(deg) != len(LEVELS) or any(g not in (0, 1, 2, 3) for g in deg):
        raise ValueError(f"state field 'degeneration' must be five grades in 0..3; got {deg!r}")
    bulges = s.get("incidental_bulges", ())
    if not set(bulges) <= set(LEVELS):
        raise ValueError(f"state field 'incidental_bulges' must hold level names from {LEVELS}; got {bulges!r}")


def render_mri(s: dict, rng: np.random.Generator) -> np.ndarray:
    """The patient's MRI key image: (IMAGE_SIZE, IMAGE_SIZE) uint8, anterior on the left, head up.

    Draws from rng in a fixed order and amount whatever the state, so the same seed gives the same
    patient build and scanner noise for any findings.
    """
    _check(s)
    an = _sample_anatomy(rng)
    geo = _layout(s, an)
    tex = _UP24 @ rng.standard_normal((2, 24, 24)).astype(np.float32) @ _UP24.T  # (2, H, W) tissue texture
    return _acquire(_draw(s, an, geo, tex), an, rng)


def landmarks(s: dict, rng: np.random.Generator) -> dict[str, dict]:
    """Where each level lies in the image that render_mri(s, ·) draws from a generator seeded like rng.

    For each name in LEVELS: "disc" and "canal" (row, col) at the middle of the disc and of the canal
    behind it, "upper_body" and "lower_body" (row, col) centres, "posterior" and "caudal" unit
    (drow, dcol) directions at the disc, and "disc_height" in px. For tests, crops and debugging.
    """
    _check(s)
    an = _sample_anatomy(rng)
    geo = _layout(s, an)
    out = {}
    for j, name in enumerate(LEVELS, start=1):
        m, depth = geo.mids[j], (an.depth[j] + an.depth[j + 1]) / 2
        slip = (geo.shift[j] + geo.shift[j + 1]) / 2
        disc, posterior, caudal = _to_pixel(an, m, depth / 2 - slip)
        out[name] = dict(
            disc=disc, canal=_to_pixel(an, m, depth + an.scale + an.canal / 2 - slip)[0],
            upper_body=_to_pixel(an, geo.centers[j], an.depth[j] / 2 - geo.shift[j])[0],
            lower_body=_to_pixel(an, geo.centers[j + 1], an.depth[j + 1] / 2 - geo.shift[j + 1])[0],
            posterior=posterior, caudal=caudal, disc_height=2 * float(geo.half[j]),
        )
    return out


def png_bytes(img: np.ndarray) -> bytes:
    """PNG encoding of a grayscale image: identical arrays give identical bytes (no time or text chunks).

    Written by hand because Pillow's PNG writer alone took 0.5 to 0.8 ms per 128 x 128 image, a third
    of the time budget; Pillow reads the result (see tests).
    """
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"image must be a 2-D uint8 array; got {img.ndim}-D {img.dtype}")
    rows = np.empty((img.shape[0], img.shape[1] + 1), np.uint8)
    rows[:, 0] = 2  # filter "Up": differences from the row above compress better than raw pixels
    rows[0, 1:] = img[0]
    rows[1:, 1:] = img[1:] - img[:-1]  # uint8 arithmetic wraps modulo 256, as PNG specifies

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", img.shape[1], img.shape[0], 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", _deflate(rows.tobytes()))
            + chunk(b"IEND", b""))


def _deflate(data: bytes) -> bytes:
    # Huffman coding only: LZ77 matching finds little in a noisy image, and skipping it halves the time.
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return z.compress(data) + z.flush()


def save_png(img: np.ndarray, path) -> None:
    Path(path).write_bytes(png_bytes(img))
