# size: one renderer: its geometry tables and its painting share private state
"""MRI key image: a synthetic T2-weighted mid-sagittal lumbar MRI of one patient's hidden state.

    python -c "from spinecast.datasets.synth import image; image.example_grid('/tmp/mri.png')"

The image is a view of the state (datasets/synth/STATE.md), like the report: disc height and signal
(`degeneration`), a slip (`listhesis_grade`), a posterior herniation and central canal narrowing
at `level`, Modic endplate change. Side, foramina and roots cannot be seen on a mid-sagittal
slice, so they are not drawn. Anterior is on the left, the head at the top.

Anatomy is drawn in a curved spine frame: u is arc length (px) along the anterior surface of the
vertebral bodies, caudal positive, 0 at the middle of the L3-L4 disc; v is depth (px) behind that
surface. The frame follows two circular arcs (the lordosis), so endplates come out radial and
discs wedge shaped, as in a real lordotic spine. Whatever varies along the spine is tabulated once
per image on a fine u grid and looked up per pixel. On 128 x 128 arrays numpy's per-call overhead,
not arithmetic, dominates, so the code keeps the number of array operations low: it draws the
spine only on the band of pixels it can reach and works in place where it can.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
from PIL import Image

IMAGE_SIZE = 128
LEVELS = ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")

# Eight bodies are drawn so that no level sits at an image edge: T12 on top, S2 (standing for the
# rest of the sacrum) at the bottom. Disc j lies between bodies j and j + 1: LEVELS[i] is disc i+1.
_N_BODIES, _ANCHOR_DISC = 8, 3  # the frame's origin is the L3-L4 disc, the apex of the lordosis
_LUT_STEP, _LUT_SIZE = 4, 1024  # tables along u at 1/4 px over [-128, 128) px

# Tissue signal before coil gain and noise (0..255). T2-weighted fast spin echo: fluid and fat are
# bright, marrow intermediate (brighter with age as it turns fatty), cortex, ligament and flowing
# blood dark.
_AIR, _SKIN, _FAT, _MUSCLE, _ABDOMEN = 3.0, 95.0, 170.0, 62.0, 92.0
_CSF, _NERVE, _LIGAMENT, _CORTEX = 235.0, 112.0, 42.0, 26.0
_ANNULUS, _HERNIA, _FLOW_VOID, _PREVERTEBRAL_FAT = 68.0, 118.0, 30.0, 150.0

# Per degeneration grade 0..3 (Pfirrmann-like): nucleus signal, disc height factor, bulge (px).
_NUCLEUS = np.array([215.0, 160.0, 105.0, 60.0])
_DISC_HEIGHT = np.array([1.0, 0.8, 0.6, 0.38])
_DISC_BULGE = np.array([0.4, 0.8, 1.2, 1.6])
_BULGE_EXTRA = 1.4  # px of broad posterior bulge at a bulging disc (the finding or incidental)

# Fraction of the canal's AP diameter lost at the level: an hourglass, mostly ligamentum flavum
# and facets from behind, partly disc from in front.
_STENOSIS = {"none": 0.0, "mild": 0.3, "moderate": 0.55, "severe": 0.8}
# Focal herniation: (depth into the canal as a fraction of its diameter, craniocaudal half-length
# in disc half-heights). A protrusion is broad and shallow, an extrusion deeper and longer.
_HERNIATION = {"none": (0, 0), "bulge": (0, 0), "protrusion": (0.4, 1.4), "extrusion": (0.7, 2.4)}
_MODIC_GAIN = (0.0, 70.0, 35.0)  # type 1: oedema (T2 bright); type 2: fatty marrow (mildly bright)

_AXIS = np.arange(IMAGE_SIZE, dtype=np.float32)
# Standard normal quantiles: noise is drawn as random bytes indexing this table, several times
# faster than rng.standard_normal, and still from the caller's rng only.
_GAUSS = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float32)


def _upsampler(n: int) -> np.ndarray:
    """(IMAGE_SIZE, n) bilinear interpolation: A @ G @ A.T smoothly upsamples an n x n grid."""
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
    marrow: float  # added marrow signal
    fat: float  # factor on the BMI-driven subcutaneous fat thickness
    gain: float  # receive gain
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
        scale=sc,
        x0=span(2, 34, 46),
        y0=span(3, 60, 68),
        tilt=span(4, -0.12, 0.12),
        radius=span(5, 250, 450),
        radius_low=span(22, 110, 160),
        bend=sc * span(23, 0, 12),
        body_h=body_h,
        depth=sc * span(6, 18, 21) * trend * (0.96 + 0.08 * r[32:40]),
        disc_h=sc * span(7, 5.0, 6.0) * (0.9 + 0.2 * r[40:47]),
        canal=sc * span(8, 7.5, 10.5),
        spine_len=sc * span(9, 14, 19),
        spine_slope=span(10, 0.2, 0.45),
        conus=span(11, 0, 1),
        marrow=span(12, -12, 12),
        fat=span(13, 0.8, 1.2),
        gain=span(14, 0.82, 1.12),
        bias=span(15, 0.1, 0.35),
        sigma=span(16, 3, 8),
        blur=span(17, 0.12, 0.25),
        hernia_size=span(18, 0.85, 1.15),
        hernia_shift=span(19, -1, 1),
        slip=span(20, -0.04, 0.04),
        nucleus=span(21, -15, 15),
    )


@dataclass
class _Layout:
    """Where things sit along the spine for one state, and per-u lookup tables for the renderer."""

    edges: np.ndarray  # (16,) u of the body boundaries: body i spans edges[2i]..edges[2i + 1]
    centers: np.ndarray  # (8,) u of the body centres
    mids: np.ndarray  # (7,) u of the disc mid-planes
    half: np.ndarray  # (7,) disc half-heights
    grades: np.ndarray  # (7,) degeneration grade of each disc
    shift: np.ndarray  # (8,) px each body is slipped anteriorly
    level: int  # disc index of s["level"]
    lut: np.ndarray = None  # see _tables


def _layout(s: dict, an: _Anatomy) -> _Layout:
    grades = np.array([s["degeneration"][0], *s["degeneration"], 3])  # T12-L1 ages like L1-L2
    disc_h = an.disc_h * _DISC_HEIGHT[grades]
    disc_h[6] = 1.5 * an.scale  # S1-S2 is a thin remnant
    lengths = np.empty(2 * _N_BODIES - 1)
    lengths[0::2], lengths[1::2] = an.body_h, disc_h
    edges = np.concatenate([[0.0], np.cumsum(lengths)])
    edges -= (edges[2 * _ANCHOR_DISC + 1] + edges[2 * _ANCHOR_DISC + 2]) / 2
    tops, bots = edges[0::2], edges[1::2]
    j = LEVELS.index(s["level"]) + 1
    # Meyerding grade g is a slip of 25 (g - 1) to 25 g % of body depth: aim inside the band.
    grade = int(s["listhesis_grade"])
    slip = (0.25 * grade - 0.07 + an.slip) * an.depth[j] if grade else 0.0
    geo = _Layout(
        edges=edges,
        centers=(tops + bots) / 2,
        mids=(bots[:-1] + tops[1:]) / 2,
        half=(tops[1:] - bots[:-1]) / 2,
        grades=grades,
        level=j,
        shift=np.where(np.arange(_N_BODIES) <= j, slip, 0.0),  # the vertebra carries those above
    )
    geo.lut = _tables(s, an, geo)
    return geo


# Rows of the per-image lookup table; each is a function of u (see _tables).
_ROWS = {
    name: i
    for i, name in enumerate(
        (
            "body_sd",
            "depth",
            "shift",
            "nucleus_u",
            "cleft",
            "nucleus",
            "ext_ant",
            "ext_post",
            "narrow",
            "sacral",
            "modic",
            "nerve",
            "aorta",
        )
    )
}
_UG = (np.arange(_LUT_SIZE) + 0.5) / _LUT_STEP - _LUT_SIZE / (2 * _LUT_STEP)  # u of each entry


def _tables(s: dict, an: _Anatomy, geo: _Layout) -> np.ndarray:
    """(len(_ROWS), _LUT_SIZE) float32: everything that varies along the spine, sampled on _UG.
    Most rows are piecewise linear, from np.interp on knots: few numpy calls (it runs per image)."""
    k = np.searchsorted(geo.centers, _UG) - 1
    np.clip(k, 0, _N_BODIES - 2, out=k)  # the disc nearest each u
    bulging = [*s.get("incidental_bulges", ())] + [s["level"]] * (s["herniation"] == "bulge")
    extra = [0.0] + [_BULGE_EXTRA * (lv in bulging) for lv in LEVELS] + [0.0]
    nucleus = _NUCLEUS[geo.grades] + an.nucleus
    nucleus[6] = _ANNULUS  # the S1-S2 remnant has no nucleus
    bulge = _DISC_BULGE[geo.grades]
    per_disc = np.array([geo.mids, geo.half, nucleus, bulge, bulge + extra])
    mid, hd, nuc, ext_ant, ext_post = per_disc[:, k]
    du = (_UG - mid) / hd
    prof = np.clip(1 - du * du, 0, 1)  # discs bulge most at mid-height
    c, m, h = geo.centers.tolist(), geo.mids.tolist(), geo.half.tolist()
    hh = (an.body_h / 2).tolist()
    # Signed distance to the nearest body along u: -half-height at its centre, +half-disc between.
    sd_knots = [c[0] - 500] + [x for i in range(7) for x in (c[i], m[i])] + [c[7], c[7] + 500]
    sd_vals = [500 - hh[0]] + [x for i in range(7) for x in (-hh[i], h[i])]
    sd_vals += [-hh[7], 500 - hh[7]]
    sc, mj, hj, f = an.scale, m[geo.level], h[geo.level], _STENOSIS[s["central_stenosis"]]
    reach, band = hj + 3 * sc, hj + 3.5 * sc  # of the stenosis; of Modic change into the bodies
    tip = c[1] + an.conus * (m[1] - c[1])  # of the conus
    rows = [
        np.interp(_UG, sd_knots, sd_vals),
        np.interp(_UG, geo.edges, np.repeat(an.depth, 2)),  # AP depth; linear across discs
        np.interp(_UG, geo.edges, np.repeat(geo.shift, 2)),
        2 - 4 * du * du,  # the nucleus' extent along u (see _discs)
        # The intranuclear cleft of adult discs, a thin dark line at mid-height.
        1 - 0.35 * (float(s["age"]) >= 35) * np.clip(1 - 5 * np.abs(du), 0, 1),
        nuc,
        ext_ant * prof,
        ext_post * prof,
        np.interp(_UG, [mj - reach, mj - hj / 2, mj + hj / 2, mj + reach], [0, f, f, 0]),
        np.interp(_UG, [c[7] - 4 * sc, c[7]], [0, 1]),  # thecal sac ends at S2; epidural fat below
        _MODIC_GAIN[s["modic"]]
        * np.interp(_UG, [mj - band - 1, mj - band, mj + band, mj + band + 1], [0, 1, 1, 0]),
        np.interp(_UG, [tip - 5 * sc, tip], [0.3 * an.canal, 0.1 * an.canal]),  # conus; cauda
        np.interp(_UG, [c[4] - 2, c[4]], [1, 0]),  # the aorta bifurcates at L4
    ]
    return np.array(rows, dtype=np.float32)


def _index(u: np.ndarray) -> np.ndarray:
    """Table index of each u; out-of-range indices are clipped by take(mode="clip")."""
    return (u * _LUT_STEP + _LUT_SIZE / 2).astype(np.intp)


@dataclass(frozen=True)
class _Arc:
    """A circular arc of the spine's anterior surface from u = u0 at `start` (x, y), with posterior
    normal n and caudal tangent t there; its centre, start + r n, lies behind the patient."""

    u0: float
    start: tuple[float, float]
    n: tuple[float, float]
    t: tuple[float, float]
    r: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.start[0] + self.r * self.n[0], self.start[1] + self.r * self.n[1]

    def at(self, u: float, v: float) -> tuple[tuple, tuple, tuple]:
        """(x, y) of frame point (u, v), with the unit posterior and caudal directions there."""
        (nx, ny), (tx, ty), th = self.n, self.t, (u - self.u0) / self.r
        c, s = math.cos(th), math.sin(th)
        post, caudal = (c * nx - s * tx, c * ny - s * ty), (s * nx + c * tx, s * ny + c * ty)
        (cx, cy), depth = self.centre, self.r - v
        return (cx - depth * post[0], cy - depth * post[1]), post, caudal

    def offsets(self, rows: slice, cols: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """dn, dt: offsets of the pixels in rows x cols from the centre along n and along t (> 0
        caudal of the start); each is one add, of a per-row and a per-column term."""
        (nx, ny), (tx, ty), (cx, cy) = self.n, self.t, self.centre
        x, y = _AXIS[cols] - np.float32(cx), _AXIS[rows] - np.float32(cy)
        return (x * nx)[None, :] + (y * ny)[:, None], (x * tx)[None, :] + (y * ty)[:, None]

    def frame(self, dn: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """u, v of the points at offsets dn, dt."""
        r = np.float32(self.r)
        u = np.arctan2(dt, -dn)
        u *= r
        u += np.float32(self.u0)
        return u, r - np.sqrt(dn * dn + dt * dt)


def _arcs(an: _Anatomy) -> tuple[_Arc, _Arc]:
    """The lordosis as two arcs meeting at u = an.bend: gentle above, tight below, as real lumbar
    lordosis is concentrated at L4-S1."""
    n = (math.cos(an.tilt), math.sin(an.tilt))
    upper = _Arc(0.0, (an.x0, an.y0), n, (-n[1], n[0]), an.radius)
    return upper, _Arc(an.bend, *upper.at(an.bend, 0.0), an.radius_low)


def _to_pixel(an: _Anatomy, u: float, v: float) -> tuple[tuple, tuple, tuple]:
    """(row, col) of frame point (u, v), with the unit posterior and caudal (drow, dcol) there."""
    upper, lower = _arcs(an)
    point, posterior, caudal = (lower if u > an.bend else upper).at(float(u), float(v))
    return point[::-1], posterior[::-1], caudal[::-1]


def _band(an: _Anatomy, geo: _Layout, arcs: tuple[_Arc, ...], first: int) -> tuple[np.ndarray, ...]:
    """The pixels the spine can reach, aorta to spinous tips: flat image indices row by row, where
    each row starts among them, and the column where each row's band ends."""
    front = -11 * an.scale - 2 - float(geo.shift.max())
    back = float(an.depth.max()) + 5 * an.scale + an.canal + an.spine_len + 2
    (cx, cy), radius = np.array([arc.centre for arc in arcs]).T, np.array([a.r for a in arcs])
    # Row y crosses the circle of constant v at cx - sqrt((r - v)^2 - (y - cy)^2), the spine being
    # in front of the centre; a row that misses the back edge's circle lies wholly in front of it.
    dy = (_AXIS - cy[:, None])[:, None, :]  # (arc, 1, row)
    reach = np.subtract.outer(radius, [front, back])[:, :, None] ** 2 - dy * dy
    x = cx[:, None, None] - np.sqrt(np.maximum(reach, 0))  # (arc, front or back, row)
    x[1, :, :first] = [[np.inf], [-np.inf]]  # the lower arc holds only from row `first` on
    lo = np.clip(np.floor(x[:, 0].min(0)) - 1, 0, IMAGE_SIZE).astype(np.intp)
    hi = np.clip(np.ceil(x[:, 1].max(0)) + 2, lo, IMAGE_SIZE).astype(np.intp)
    starts = np.concatenate([[0], np.cumsum(hi - lo)])
    row_offset = np.arange(IMAGE_SIZE) * IMAGE_SIZE + lo - starts[:-1]
    return np.arange(starts[-1]) + np.repeat(row_offset, hi - lo), starts, hi


@dataclass
class _Pixels:
    """The spine's band of pixels (see _band) as 1-D arrays in image order. v has the slip applied
    (where the spine's own anatomy sits); w = v - depth is depth behind the posterior surface of
    the bodies. table(name) looks a _tables row up at each band pixel."""

    flat: np.ndarray
    starts: np.ndarray
    band_end: np.ndarray
    u: np.ndarray
    v: np.ndarray
    lut: np.ndarray
    cache: dict = field(default_factory=dict)

    def __post_init__(self):
        self.iu = _index(self.u)
        self.v = self.v + self.table("shift")  # a slipped vertebra sits further forward
        self.depth = self.table("depth")
        self.w = self.v - self.depth

    def table(self, name: str) -> np.ndarray:
        if name not in self.cache:
            self.cache[name] = self.lut[_ROWS[name]].take(self.iu, mode="clip")
        return self.cache[name]


def _pixels(an: _Anatomy, geo: _Layout) -> _Pixels:
    arcs = upper, lower = _arcs(an)
    # Below the radial line where the arcs meet (both centres lie on it) the lower arc holds.
    (x0, y0), slope = lower.start, lower.n[1] / lower.n[0]
    first = int(np.clip(y0 + min(-x0 * slope, (IMAGE_SIZE - 1 - x0) * slope), 0, IMAGE_SIZE))
    flat, starts, band_end = _band(an, geo, arcs, first)
    dn, dt = upper.offsets(slice(None))
    u, v = upper.frame(dn.ravel()[flat], dt.ravel()[flat])
    k = starts[first]  # band pixels from here on lie in rows where the lower arc may hold
    lower_rows = lower.offsets(slice(first, None))
    dn, dt = (a.ravel()[flat[k:] - first * IMAGE_SIZE] for a in lower_rows)
    u2, v2 = lower.frame(dn, dt)
    low = dt > 0
    u[k:] += low * (u2 - u[k:])  # arithmetic select: np.where is several times slower here
    v[k:] += low * (v2 - v[k:])
    return _Pixels(flat=flat, starts=starts, band_end=band_end, u=u, v=v, lut=geo.lut)


def _paint(img: np.ndarray, alpha: np.ndarray, value) -> None:
    """Composite a tissue over the image; alpha in [0, 1] gives partial-volume edges."""
    step = np.subtract(value, img)
    step *= alpha
    img += step


def _alpha(sd: np.ndarray) -> np.ndarray:
    """Coverage of a pixel by a shape from its signed distance (px, negative inside)."""
    cover = np.subtract(np.float32(0.5), sd)
    return np.clip(cover, 0.0, 1.0, out=cover)


def _box_sd(su: np.ndarray, sv: np.ndarray, r: float) -> np.ndarray:
    """Signed distance of a box from its distances along u and v, corners cut at 45 degrees r px
    back: cheaper than rounding them, and alike once blurred."""
    return np.maximum(np.maximum(su, sv), (su + sv + r) * np.float32(0.7071))


def _paint_bone(img: np.ndarray, sd: np.ndarray, marrow) -> None:
    _paint(img, _alpha(sd), _CORTEX)
    _paint(img, _alpha(sd + 1.1), marrow)  # the dark cortical rim is about a pixel thick


def _soft_tissue(s: dict, an: _Anatomy, px: _Pixels, tex: np.ndarray) -> np.ndarray:
    """Abdomen in front of the spine; paraspinal muscle, subcutaneous fat, skin and air behind."""
    behind = (_AXIS[None, :] >= px.band_end[:, None]).astype(np.float32)
    behind.ravel()[px.flat] = px.w > -0.5 * px.depth
    img = _ABDOMEN + 38 * tex
    img += behind * ((_MUSCLE - _ABDOMEN) - 30 * tex)  # muscle, with 8 * tex
    back = float(an.depth[4] + an.canal + an.spine_len) + 5 * an.scale  # past the spinous tips
    fat = an.fat * an.scale * float(np.clip(4 + 1.1 * (float(s["bmi"]) - 18), 3, 40))
    # The back's fat and skin follow half the upper lordosis: v_soft, which is at most the straight
    # depth (p - origin) . n, so the columns in front of `back` on every row are skipped.
    upper, (nx, ny) = _arcs(an)[0], (math.cos(an.tilt), math.sin(an.tilt))
    reach = max(-an.y0 * ny, (IMAGE_SIZE - 1 - an.y0) * ny)
    cols = slice(int(np.clip(an.x0 + (back - 1 - reach) / nx, 0, IMAGE_SIZE)), None)
    dn, dt = upper.offsets(slice(None), cols)
    v_soft = dn + np.float32(upper.r) - dt * dt / np.float32(4 * upper.r)
    for edge, value in ((back, _FAT), (back + fat, _SKIN), (back + fat + 1.5 * an.scale, _AIR)):
        _paint(img[:, cols], _alpha(edge - v_soft), value)
    return img


def _prevertebral(img: np.ndarray, an: _Anatomy, px: _Pixels) -> None:
    """Prevertebral fat, then the aorta's flow void, lying on the front of the spine."""
    _paint(img, _alpha(np.maximum(-3 * an.scale - px.v, px.v)), _PREVERTEBRAL_FAT)
    aorta = _alpha(np.maximum(-10 * an.scale - px.v, px.v + 3 * an.scale)) * px.table("aorta")
    _paint(img, aorta, _FLOW_VOID)


def _canal_and_arches(img: np.ndarray, an: _Anatomy, px: _Pixels, marrow: np.ndarray) -> None:
    sc, back = an.scale, an.scale + an.canal  # the canal spans w in [sc, back], behind the PLL
    # Ligament sheath: PLL in front, ligamentum flavum behind (laminae cover it at body levels).
    _paint(img, _alpha(np.maximum(-px.w, px.w - back - 2.5 * sc)), _LIGAMENT)
    # Laminae and spinous processes: the bodies' u-extent, slanting caudally with depth.
    u_arch = px.u - an.spine_slope * (px.w - back)
    su = px.lut[_ROWS["body_sd"]].take(_index(u_arch), mode="clip") + sc
    sv = np.maximum(back - 0.5 - px.w, px.w - back - an.spine_len)
    _paint_bone(img, _box_sd(su, sv, 2.5 * sc), marrow - 10)
    # CSF, narrowed at a stenotic level mostly from behind (ligamentum flavum, facets).
    narrow = px.table("narrow") * an.canal
    canal = _alpha(np.maximum(sc + 0.3 * narrow - px.w, px.w - back + 0.7 * narrow))
    _paint(img, canal, _CSF + (_FAT - _CSF) * px.table("sacral"))
    # Conus or cauda equina, lying dependent (posterior) in a supine patient.
    nerve = _alpha(np.abs(px.w - sc - 0.6 * an.canal) - px.table("nerve"))
    _paint(img, nerve * canal, _NERVE)


def _discs(img: np.ndarray, px: _Pixels) -> None:
    su = -0.7 - px.table("body_sd")  # overlap the endplates; the bodies are drawn on top
    sv = np.maximum(-px.table("ext_ant") - px.v, px.w - px.table("ext_post"))
    disc = _alpha(np.maximum(su, sv))
    _paint(img, disc, _ANNULUS)
    ratio = px.v / px.depth - 0.5
    nucleus = np.clip(px.table("nucleus_u") - 13.8 * ratio * ratio, 0.0, 1.0)  # an ellipse
    nucleus *= disc * px.table("cleft")
    _paint(img, nucleus, px.table("nucleus"))


def _herniation(img: np.ndarray, s: dict, an: _Anatomy, geo: _Layout, px: _Pixels) -> None:
    frac, length = _HERNIATION[s["herniation"]]
    if not frac:
        return
    # A paracentral herniation lies partly off the midline slice, so less of it shows.
    size = an.hernia_size * (1.0 if s.get("herniation_side") in ("central", "") else 0.8)
    half, centre = float(geo.half[geo.level]), float(geo.mids[geo.level])
    depth, half_len = frac * an.canal * size, length * half * size + 1.0
    if s["herniation"] == "extrusion":  # extruded material may migrate up or down behind a body
        centre += an.hernia_shift * 1.5 * half
    # Only the band's pixels in the rows near it are computed: a herniation is small.
    surface = float(np.interp(centre, geo.centers, an.depth - geo.shift))  # back of the bodies
    row, reach = _to_pixel(an, centre, surface)[0][0], half_len + depth + 3
    rows = np.clip([row - reach, row + reach + 2], 0, IMAGE_SIZE).astype(int)
    near = slice(*px.starts[rows])
    u, w = px.u[near], px.w[near]
    e = np.sqrt(((u - centre) / half_len) ** 2 + (w / depth) ** 2)
    hernia = _alpha((e - 1) * min(half_len, depth)) * np.clip(w + 1.5, 0.0, 1.0)
    _paint(img[near], hernia, _HERNIA)


def _bodies(img: np.ndarray, an: _Anatomy, px: _Pixels, marrow: np.ndarray, modic: int) -> None:
    su = px.table("body_sd")
    waist = np.clip(su * (-1.6 * an.scale / float(an.body_h[4])), 0.0, 0.8 * an.scale)  # concave
    sd = _box_sd(su, np.maximum(waist - px.v, px.w), 2.0 * an.scale)
    _paint_bone(img, sd, marrow + px.table("modic") if modic else marrow)  # bands at endplates


def _draw(s: dict, an: _Anatomy, geo: _Layout, tex: np.ndarray) -> np.ndarray:
    """The noiseless image: tissue signal before coil shading, blur and noise."""
    px = _pixels(an, geo)
    img = _soft_tissue(s, an, px, tex)
    band = img.ravel()[px.flat]  # the spine is drawn on its band of pixels, then put back
    # Marrow turns fatty, hence T2-brighter, with age.
    age = min(max(float(s["age"]) - 20, 0), 70)
    marrow = 10 * tex.ravel()[px.flat] + (95 + 0.8 * age + an.marrow)
    _prevertebral(band, an, px)
    _canal_and_arches(band, an, px, marrow)
    _discs(band, px)
    _herniation(band, s, an, geo, px)
    _bodies(band, an, px, marrow, s["modic"])
    img.ravel()[px.flat] = band
    return img


def _blur(img: np.ndarray, w: float) -> np.ndarray:
    """Separable 3-tap [w, 1 - 2w, w] blur, edges replicated: the scanner's point spread."""
    pad = np.concatenate([img[:1], img, img[-1:]])
    img = (pad[2:] + pad[:-2]) * w + img * (1 - 2 * w)
    pad = np.hstack([img[:, :1], img, img[:, -1:]])
    return (pad[:, 2:] + pad[:, :-2]) * w + img * (1 - 2 * w)


def _acquire(img: np.ndarray, an: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Coil shading, blur and Rician noise, quantised to uint8."""
    # The receive coil is behind the patient (right of the image): signal falls off anteriorly.
    shading = _UP4 @ (0.05 * an.gain * rng.standard_normal((4, 4))).astype(np.float32) @ _UP4.T
    shading += an.gain * (1 + an.bias / IMAGE_SIZE * (_AXIS - IMAGE_SIZE / 2))  # per column
    img *= shading
    img = _blur(img, an.blur)
    draws = np.frombuffer(rng.bytes(IMAGE_SIZE * IMAGE_SIZE), np.uint8).astype(np.intp)
    noise = _GAUSS.take(draws).reshape(IMAGE_SIZE, IMAGE_SIZE)
    noise *= np.float32(an.sigma)
    # Magnitude of complex data: Rician. The imaginary part's noise is the real part's mirrored
    # through the centre: another pixel's draw, so independent at each pixel, and free.
    img += noise
    img = np.sqrt(img * img + noise[::-1, ::-1] ** 2)
    img += 0.5
    return np.minimum(img, 255.0, out=img).astype(np.uint8)


def _check(s: dict) -> None:
    """Validate the state fields the image draws; say what was given and what was expected."""
    expected = {
        "level": LEVELS,
        "herniation": tuple(_HERNIATION),
        "central_stenosis": tuple(_STENOSIS),
        "listhesis_grade": (0, 1, 2),
        "modic": (0, 1, 2),
    }
    for key, allowed in expected.items():
        if s.get(key) not in allowed:
            raise ValueError(f"state field {key!r} must be one of {allowed}; got {s.get(key)!r}")
    deg = s.get("degeneration")
    if deg is None or len(deg) != len(LEVELS) or any(g not in (0, 1, 2, 3) for g in deg):
        raise ValueError(f"state field 'degeneration' must be five grades in 0..3; got {deg!r}")
    bulges = s.get("incidental_bulges", ())
    if not set(bulges) <= set(LEVELS):
        raise ValueError(
            f"state field 'incidental_bulges' must hold names from {LEVELS}; got {bulges!r}"
        )


def render_mri(s: dict, rng: np.random.Generator) -> np.ndarray:
    """The patient's MRI key image: (IMAGE_SIZE, IMAGE_SIZE) uint8, anterior left, head up.

    Draws from rng in a fixed order and amount whatever the state, so the same seed gives the same
    patient build and scanner noise for any findings. It renders whatever has_mri says: the caller
    decides who has an image.
    """
    _check(s)
    an = _sample_anatomy(rng)
    geo = _layout(s, an)
    # Tissue texture; abdomen, muscle and marrow never overlap, so one field serves them all.
    tex = _UP24 @ rng.standard_normal((24, 24)).astype(np.float32) @ _UP24.T
    return _acquire(_draw(s, an, geo, tex), an, rng)


def landmarks(s: dict, rng: np.random.Generator) -> dict[str, dict]:
    """Where each level lies in the image render_mri(s, .) draws from a generator seeded like rng.

    For each name in LEVELS: "disc" and "canal" (row, col) at the middle of the disc and of the
    canal behind it, "upper_body" and "lower_body" (row, col) centres, "posterior" and "caudal"
    unit (drow, dcol) directions at the disc, and "disc_height" in px. For tests and crops.
    """
    _check(s)
    an = _sample_anatomy(rng)
    geo = _layout(s, an)
    out = {}
    for j, name in enumerate(LEVELS, start=1):
        m, depth = geo.mids[j], (an.depth[j] + an.depth[j + 1]) / 2
        slip = (geo.shift[j] + geo.shift[j + 1]) / 2
        disc, posterior, caudal = _to_pixel(an, m, depth / 2 - slip)
        bodies = [  # above and below the disc
            _to_pixel(an, geo.centers[i], an.depth[i] / 2 - geo.shift[i])[0] for i in (j, j + 1)
        ]
        out[name] = {
            "disc": disc,
            "canal": _to_pixel(an, m, depth + an.scale + an.canal / 2 - slip)[0],
            "upper_body": bodies[0],
            "lower_body": bodies[1],
            "posterior": posterior,
            "caudal": caudal,
            "disc_height": 2 * float(geo.half[j]),
        }
    return out


def png_bytes(img: np.ndarray) -> bytes:
    """PNG of a grayscale image: identical arrays give identical bytes (Pillow writes no time
    chunk)."""
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"image must be a 2-D uint8 array; got {img.ndim}-D {img.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(img).save(
        buffer, format="PNG", compress_level=1
    )  # fast; noise barely compresses
    return buffer.getvalue()


def save_png(img: np.ndarray, path) -> None:
    Path(path).write_bytes(png_bytes(img))


def example_grid(path, seed: int = 0) -> np.ndarray:
    """Eight patients with different findings, 4 x 2, saved as one PNG: a visual check."""
    base = {
        "level": "L4-L5",
        "degeneration": [1, 1, 1, 1, 1],
        "herniation": "none",
        "herniation_side": "",
        "central_stenosis": "none",
        "listhesis_grade": 0,
        "modic": 0,
        "incidental_bulges": [],
        "age": 50,
        "bmi": 27.0,
    }
    cases = [
        {},
        {"herniation": "extrusion", "herniation_side": "central", "degeneration": [0, 1, 1, 3, 1]},
        {"central_stenosis": "severe", "degeneration": [1, 1, 2, 3, 2], "age": 70},
        {"listhesis_grade": 2, "central_stenosis": "moderate", "age": 66},
        {"level": "L5-S1", "modic": 1, "degeneration": [0, 0, 1, 2, 3]},
        {"level": "L5-S1", "herniation": "protrusion", "herniation_side": "left", "age": 35},
        {"degeneration": [0, 0, 0, 0, 0], "age": 25, "bmi": 19.0},
        {"level": "L3-L4", "listhesis_grade": 1, "degeneration": [3] * 5, "age": 80, "bmi": 38.0},
    ]
    imgs = [render_mri({**base, **c}, np.random.default_rng(seed + i)) for i, c in enumerate(cases)]
    grid = np.vstack([np.hstack(imgs[:4]), np.hstack(imgs[4:])])
    save_png(grid, path)
    return grid
