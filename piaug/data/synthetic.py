"""Seeded synthetic lateral-cephalogram-like X-ray images with landmarks.

The project's built-in default dataset, for when no real data is at hand.  Each subject is a
2-D grayscale "radiograph" of a head seen from the side (face to the right), assembled from
simple analytic shapes in a canonical template frame (the unit square):

* bright, smooth bone-like structures with sharp edges and corners (skull vault, cranial base
  with sella turcica, nasal bone, orbit rim, maxilla with palate and spines, mandible, teeth,
  cervical vertebrae, hyoid, ear rods), each with a brighter cortical rim;
* trabecular-like band-limited texture inside the bones (per-subject ridged B-spline noise);
* soft tissue whose brightness ramps up with depth below the skin plus smooth random blobs, and
  a darker airway;
* air in front of the face with film grain, and a collimated border that is exactly constant
  (black, no grain);
* mild intensity-dependent film grain on the exposed area only;
* a burned-in film label (bright rectangle with blocky digits, drawn with numpy) in the top-right
  corner.

This exercises what information-guided augmentation depends on: the per-pixel image information
entropy (IIE) of gray values in a disk of radius ~10 px is low (< 2 bits) on the collimated border
and the label, medium on soft tissue and air, and high on bone texture and edges, and the
landmarks sit on structural points (corners, tips, junctions, extrema) of high local entropy.

Per-subject shape variation is a smooth non-rigid warp (a random cubic Bezier displacement field)
composed with a small random affine map (rotation <= 3 deg, scale +-5 %, translation <= 3 % of
the field).  The image is rendered by backward mapping: every pixel centre p is mapped to
template coordinates q = B(p) and the template is evaluated there analytically.  Landmarks are
fixed template points (``LANDMARK_NAMES``) mapped forward by solving B(p) = q to machine
precision, so landmarks and pixels agree to ~1e-4 px (pixels are rendered in float32) and each
landmark lands on the same structural point in every subject.  All random parameters are
bounded so that landmarks provably stay inside the image (at least 1 % of the field from the
border).

Geometry and spacing: the template unit square is fitted to the shorter image side and centred;
it spans a field of view of 193.5 mm (the width of an ISBI 2015 cephalogram, 1935 px at
0.1 mm/px), so ``spacing = 193.5 / min(height, width)`` mm per pixel (0.504 mm at 384 x 384).

Determinism: subject ``index`` of ``seed`` draws from ``PCG64(SeedSequence((seed, index)))``
only, so it does not depend on other subjects; anatomy parameters are drawn before the
size-dependent grain, so a subject has the same anatomy at every size.  Rendering uses only
+, -, *, /, sqrt, comparisons and gathers in numpy (no BLAS, no transcendental functions, no
library resampling), which are exactly rounded under IEEE 754, so results should be bit-identical
across machines and library versions.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from piaug.data.common import DatasetSpec, check_options, check_split
from piaug.errors import UserError

__all__ = ["LANDMARK_NAMES", "MAX_LANDMARKS", "SPEC", "SyntheticDataset", "generate", "load"]

FOV_MM = 193.5
MIN_SIZE = 64

# Named template points (u to the right, v down, unit square).  Shapes below are built from
# these exact points, so every landmark is a vertex / junction / extremum of the anatomy.
_S = (0.440, 0.462)  # sella: centre of the sella turcica notch
_N = (0.43 + 0.34 * 0.9659258262890683, 0.36 + 0.30 * 0.25881904510252074)  # vault/cut corner
_OR = (0.675, 0.475)  # orbitale: lowest point of the orbit rim (centre line)
_PO = (0.300, 0.470)  # porion: top of the ear-rod ring (centre line)
_A, _B = (0.772, 0.628), (0.755, 0.775)
_POG, _ME, _GN, _GO = (0.782, 0.825), (0.735, 0.866), (0.766, 0.856), (0.385, 0.775)
_LIT, _UIT = (0.797, 0.703), (0.812, 0.718)
_UL, _LL, _SN, _SPOG = (0.875, 0.655), (0.868, 0.715), (0.855, 0.585), (0.855, 0.815)
_PNS, _ANS, _AR, _BA = (0.545, 0.595), (0.805, 0.588), (0.365, 0.575), (0.350, 0.632)
_PCL, _COR = (0.395, 0.425), (0.470, 0.565)
_C2, _C3S, _C3I = (0.300, 0.720), (0.305, 0.742), (0.312, 0.802)

LANDMARK_NAMES: tuple[str, ...] = (
    "sella",
    "nasion",
    "orbitale",
    "porion",
    "subspinale",
    "supramentale",
    "pogonion",
    "menton",
    "gnathion",
    "gonion",
    "lower_incisal_incision",
    "upper_incisal_incision",
    "upper_lip",
    "lower_lip",
    "subnasale",
    "soft_tissue_pogonion",
    "posterior_nasal_spine",
    "anterior_nasal_spine",
    "articulare",
    "basion",
    "posterior_clinoid",
    "coronoid_tip",
    "c2_anterior_inferior",
    "c3_anterior_superior",
    "c3_anterior_inferior",
)
_TEMPLATE_LANDMARKS = np.array(
    [
        _S,
        _N,
        _OR,
        _PO,
        _A,
        _B,
        _POG,
        _ME,
        _GN,
        _GO,
        _LIT,
        _UIT,
        _UL,
        _LL,
        _SN,
        _SPOG,
        _PNS,
        _ANS,
        _AR,
        _BA,
        _PCL,
        _COR,
        _C2,
        _C3S,
        _C3I,
    ],
    dtype=np.float64,
)
MAX_LANDMARKS = len(LANDMARK_NAMES)

_FACE = [
    (0.60, 0.12),
    (0.74, 0.16),
    (0.80, 0.28),
    (0.815, 0.36),
    (0.80, 0.42),
    (0.86, 0.50),
    (0.905, 0.545),
    (0.895, 0.565),
    _SN,
    (0.865, 0.62),
    _UL,
    (0.853, 0.685),
    _LL,
    (0.835, 0.765),
    _SPOG,
    (0.835, 0.865),
    (0.79, 0.895),
    (0.68, 0.91),
    (0.64, 0.95),
    (0.63, 1.3),
    (0.45, 1.3),
    (0.45, 0.40),
]
_NECK = [(0.12, 1.3), (0.13, 0.80), (0.16, 0.62), (0.35, 0.40), (0.55, 0.40), (0.55, 1.3)]
_CRANIAL_BASE = [
    _PCL,
    (0.412, 0.430),
    (0.414, 0.465),
    (0.440, 0.490),
    (0.466, 0.465),
    (0.470, 0.440),
    (0.490, 0.438),
    (0.560, 0.470),
    (0.570, 0.530),
    (0.480, 0.560),
    (0.385, 0.625),
    _BA,
    _AR,
    (0.385, 0.500),
]
_NASAL = [_N, (0.800, 0.492), (0.792, 0.498), (0.752, 0.450)]
_MAXILLA = [
    _PNS,
    (0.600, 0.583),
    (0.740, 0.583),
    _ANS,
    (0.780, 0.600),
    _A,
    (0.790, 0.675),
    (0.765, 0.682),
    (0.730, 0.640),
    (0.620, 0.612),
    (0.570, 0.607),
]
_MAX_BODY = [(0.56, 0.48), (0.70, 0.49), (0.755, 0.53), (0.775, 0.585), (0.55, 0.59)]
_MANDIBLE = [
    (0.365, 0.515),
    (0.385, 0.530),
    (0.390, 0.560),
    (0.430, 0.600),
    _COR,
    (0.475, 0.620),
    (0.500, 0.700),
    (0.620, 0.730),
    (0.720, 0.735),
    (0.765, 0.725),
    _B,
    _POG,
    _GN,
    _ME,
    (0.560, 0.830),
    (0.450, 0.790),
    _GO,
    (0.370, 0.650),
    _AR,
    (0.352, 0.535),
]
_UPPER_INCISOR = [
    (0.755, 0.610),
    (0.775, 0.615),
    (0.816, 0.690),
    _UIT,
    (0.790, 0.697),
    (0.745, 0.625),
]
_LOWER_INCISOR = [
    (0.725, 0.800),
    (0.745, 0.792),
    (0.801, 0.722),
    _LIT,
    (0.781, 0.716),
    (0.713, 0.795),
]
_MOLARS = [
    [
        (0.600, 0.615),
        (0.665, 0.615),
        (0.670, 0.665),
        (0.655, 0.677),
        (0.615, 0.677),
        (0.600, 0.665),
    ],
    [(0.602, 0.681), (0.668, 0.681), (0.664, 0.735), (0.606, 0.735)],
    [(0.680, 0.618), (0.715, 0.620), (0.718, 0.676), (0.684, 0.678)],
    [(0.682, 0.682), (0.718, 0.682), (0.714, 0.733), (0.686, 0.733)],
]
_VERTEBRAE = [
    [
        (0.270, 0.600),
        (0.290, 0.615),
        (0.295, 0.680),
        _C2,
        (0.235, 0.725),
        (0.230, 0.640),
        (0.250, 0.615),
    ],
    [(0.240, 0.747), _C3S, _C3I, (0.245, 0.806)],
    [(0.250, 0.826), (0.316, 0.820), (0.322, 0.880), (0.256, 0.886)],
]
_HYOID = [(0.515, 0.878), (0.560, 0.872), (0.566, 0.888), (0.520, 0.895)]
_VAULT_C, _VAULT_R, _VAULT_T = (0.43, 0.36), (0.34, 0.30), 0.032
_CUT = (_N, (0.10, 0.58))  # cranial-base line through nasion; the vault is kept above it
_FIELD_C, _FIELD_R = (0.56, 0.47), (0.58, 0.55)  # collimated exposure field (image frame)
_AIRWAY = [(0.375, 0.56), (0.350, 0.70), (0.350, 0.97)]
_FONT = {  # 3 x 5 blocky digits, rows top to bottom
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001010010010",
    "8": "111101111101111",
    "9": "111101111001111",
    "-": "000000111000000",
}


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_args(seed: Any, size: Any, num_landmarks: Any) -> tuple[int, tuple[int, int], int]:
    seed = _check_int("seed", seed, 0)
    try:
        h, w = (_check_int("size", s, MIN_SIZE) for s in size)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"size must be a (height, width) pair of ints >= {MIN_SIZE}, got {size!r}"
        ) from e
    if not isinstance(num_landmarks, int | np.integer) or isinstance(num_landmarks, bool):
        raise ValueError(f"num_landmarks must be an integer, got {num_landmarks!r}")
    if not 1 <= num_landmarks <= MAX_LANDMARKS:
        raise ValueError(
            f"num_landmarks must be in [1, {MAX_LANDMARKS}] "
            f"(maximum {MAX_LANDMARKS}), got {num_landmarks}"
        )
    return seed, (h, w), int(num_landmarks)


def _draw_params(seed: int, index: int) -> dict[str, Any]:
    """All anatomy parameters of one subject (independent of image size).

    Bounds: landmarks lie in the template box [0.30, 0.88] x [0.42, 0.87]; the rotation and
    scale move them by <= 0.06, the shift by <= 0.03 and the warp by <= 0.03 per coordinate,
    so they stay inside [0.01, 0.99] of the field.  |grad d| <= 6 * 0.03 keeps the warp
    invertible (and the fixed-point inversion in ``_forward`` a contraction).
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence((seed, index))))
    p: dict[str, Any] = {
        "tan_half": rng.uniform(-0.02619, 0.02619),  # tan(theta / 2), |theta| <= 3 deg
        "scale": rng.uniform(0.95, 1.05),
        "shift": rng.uniform(-0.03, 0.03, size=2),
        "disp": rng.uniform(-0.03, 0.03, size=(2, 4, 4)),  # cubic Bezier control displacements
        "tex": [rng.uniform(-1.0, 1.0, size=(n + 3, n + 3)) for n in (36, 80)],
        "blobs": rng.uniform(-1.0, 1.0, size=(6, 6)),
        "gain": rng.uniform(0.92, 1.08),
        "bone": rng.uniform(0.9, 1.1),
        "label": int(rng.integers(0, 100)),
    }
    t = p["tan_half"]  # rational rotation: no trigonometric functions needed
    p["rot"] = ((1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t))
    p["rng"] = rng  # continues with the size-dependent grain
    return p


def _bezier_power(c: np.ndarray, axis: int) -> np.ndarray:
    """Cubic Bernstein coefficients -> power-basis coefficients along ``axis``."""
    c0, c1, c2, c3 = np.moveaxis(c, axis, 0)
    out = [c0, 3.0 * (c1 - c0), 3.0 * (c2 - 2.0 * c1 + c0), c3 - 3.0 * c2 + 3.0 * c1 - c0]
    return np.moveaxis(np.stack(out), 0, axis)


def _bezier_disp(ax: np.ndarray, ay: np.ndarray, ctrl: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cubic tensor-product Bezier displacement (Horner form); |d| <= max |ctrl|.

    ``ctrl`` has shape (2, 4, 4) = (component, u-index, v-index); outside the unit square the
    field is extended by clamping the coordinates.
    """
    s, t = np.clip(ax, 0.0, 1.0), np.clip(ay, 0.0, 1.0)
    pw = _bezier_power(_bezier_power(ctrl, 1), 2).tolist()  # Python floats keep the dtype
    out = []
    for pc in pw:
        q = [((pc[3][b] * s + pc[2][b]) * s + pc[1][b]) * s + pc[0][b] for b in range(4)]
        out.append(((q[3] * t + q[2]) * t + q[1]) * t + q[0])
    return out[0], out[1]


def _backward(x: np.ndarray, y: np.ndarray, p: dict[str, Any] | None, hw: tuple[int, int]):
    """Image pixel coordinates (x = column, y = row) -> template coordinates (u, v)."""
    h, w = hw
    s = min(h, w)
    nx, ny = (x + (0.5 - (w - s) / 2)) / s, (y + (0.5 - (h - s) / 2)) / s
    if p is None:
        return nx, ny
    c, si = p["rot"]
    k, (tx, ty) = p["scale"], p["shift"].tolist()
    ax = (k * c) * (nx - 0.5) - (k * si) * (ny - 0.5) + (0.5 + tx)
    ay = (k * si) * (nx - 0.5) + (k * c) * (ny - 0.5) + (0.5 + ty)
    dx, dy = _bezier_disp(ax, ay, p["disp"])
    return ax + dx, ay + dy


def _forward(q: np.ndarray, p: dict[str, Any] | None, hw: tuple[int, int]) -> np.ndarray:
    """Template points (L, 2) -> image pixel coordinates, the inverse of ``_backward``."""
    h, w = hw
    s = min(h, w)
    n = q.astype(np.float64)
    if p is not None:
        a = n.copy()
        for _ in range(200):  # fixed point a = q - d(a); a contraction since |grad d| < 0.25
            a_new = n - np.stack(_bezier_disp(a[:, 0], a[:, 1], p["disp"]), axis=1)
            done = np.max(np.abs(a_new - a)) < 1e-15
            a = a_new
            if done:
                break
        c, si = p["rot"]
        k, (tx, ty) = p["scale"], p["shift"].tolist()
        bx, by = (a[:, 0] - 0.5 - tx) / k, (a[:, 1] - 0.5 - ty) / k
        n = np.stack([0.5 + c * bx + si * by, 0.5 - si * bx + c * by], axis=1)
    return np.stack([n[:, 0] * s + ((w - s) / 2 - 0.5), n[:, 1] * s + ((h - s) / 2 - 0.5)], 1)


def _sdf_polygon(u: np.ndarray, v: np.ndarray, verts: Sequence[tuple[float, float]]):
    """Signed distance to a simple polygon (negative inside)."""
    d2 = np.full(u.shape, np.inf, dtype=u.dtype)
    inside = np.zeros(u.shape, dtype=bool)
    for i in range(len(verts)):
        (x0, y0), (x1, y1) = verts[i], verts[i - 1]
        ex, ey = x1 - x0, y1 - y0
        wx, wy = u - x0, v - y0
        t = np.clip((wx * ex + wy * ey) * (1.0 / (ex * ex + ey * ey)), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        np.minimum(d2, bx * bx + by * by, out=d2)
        inside ^= ((v >= y0) != (v >= y1)) & ((ex * wy > ey * wx) == (y1 > y0))
    d = np.sqrt(d2)
    return np.where(inside, -d, d)


def _sdf_ellipse(u: np.ndarray, v: np.ndarray, c: tuple[float, float], r: tuple[float, float]):
    """First-order signed distance to an ellipse (accurate near its boundary)."""
    xr, yr = (u - c[0]) * (1.0 / r[0]), (v - c[1]) * (1.0 / r[1])
    gx, gy = xr * (1.0 / r[0]), yr * (1.0 / r[1])
    return (xr * xr + yr * yr - 1.0) / (2.0 * np.sqrt(gx * gx + gy * gy) + 1e-6)


def _sdf_polyline(u: np.ndarray, v: np.ndarray, pts: Sequence[tuple[float, float]], r: float):
    d2 = np.full(u.shape, np.inf, dtype=u.dtype)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        ex, ey = x1 - x0, y1 - y0
        wx, wy = u - x0, v - y0
        t = np.clip((wx * ex + wy * ey) * (1.0 / (ex * ex + ey * ey)), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        np.minimum(d2, bx * bx + by * by, out=d2)
    return np.sqrt(d2) - r


def _bspline_raster(ctrl: np.ndarray, n_out: int) -> np.ndarray:
    """Cubic B-spline surface with (n+3)^2 controls sampled on an n_out^2 grid over [0, 1]^2."""
    n = ctrl.shape[0] - 3
    g = np.arange(n_out) * (n / (n_out - 1))
    i = np.minimum(np.floor(g).astype(np.int64), n - 1)
    f = g - i
    f1, f2, f3 = 1.0 - f, f * f, f * f * f
    wts = [f1 * f1 * f1 / 6, (3 * f3 - 6 * f2 + 4) / 6, (-3 * f3 + 3 * f2 + 3 * f + 1) / 6, f3 / 6]
    rows = sum(wts[k][:, None] * ctrl[i + k, :] for k in range(4))
    return sum(wts[k][None, :] * rows[:, i + k] for k in range(4)).astype(np.float32)


def _sample(raster: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear sampling of a raster covering [0, 1]^2 (clamped outside)."""
    n = raster.shape[0] - 1
    gx, gy = np.clip(u * n, 0.0, n - 1e-3), np.clip(v * n, 0.0, n - 1e-3)
    ix, iy = gx.astype(np.int64), gy.astype(np.int64)
    fx, fy = gx - ix, gy - iy
    flat, k = raster.ravel(), iy * (n + 1) + ix
    top = flat[k] * (1 - fx) + flat[k + 1] * fx
    bot = flat[k + n + 1] * (1 - fx) + flat[k + n + 2] * fx
    return top * (1 - fy) + bot * fy


class _Grid:
    """Template coordinates of all pixels, with windows restricting work to a shape's box."""

    def __init__(self, u: np.ndarray, v: np.ndarray, px: float) -> None:
        self.u, self.v, self.px = u, v, px
        self.us, self.vs = u[::8, ::8], v[::8, ::8]

    def window(self, pts: Sequence[tuple[float, float]], pad: float = 0.0):
        """Image slices covering every pixel whose template point is within ``pad`` of the box
        of ``pts`` (the 8-px stride is covered by an extra 12 px margin)."""
        a = np.asarray(pts, dtype=np.float64)
        m = 12 * self.px + pad
        (x0, y0), (x1, y1) = (a.min(0) - m).tolist(), (a.max(0) + m).tolist()
        hit = (self.us >= x0) & (self.us <= x1) & (self.vs >= y0) & (self.vs <= y1)
        rows, cols = np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0))
        if rows.size == 0:
            return None
        return (
            slice(max(8 * rows[0] - 8, 0), 8 * rows[-1] + 9),
            slice(max(8 * cols[0] - 8, 0), 8 * cols[-1] + 9),
        )


def _bone(
    d: np.ndarray,
    px: float,
    tex: np.ndarray,
    base: float,
    rim: float,
    tx: float,
    rim_w: float = 0.010,
) -> np.ndarray:
    """Bone attenuation from a signed distance: antialiased edge, cortical rim, texture."""
    cov = np.clip(0.5 - d * (1.0 / px), 0.0, 1.0)
    r = np.clip(1.0 + d * (1.0 / rim_w), 0.0, 1.0)
    return cov * (base + rim * r * r + tx * tex)


def _label(img: np.ndarray, text: str) -> None:
    """Burn a bright rectangle with dark blocky text into the top-right corner, in place."""
    h, w = img.shape
    cell = max(1, round(min(h, w) / 160))
    tw, th = (4 * len(text) + 3) * cell, 9 * cell
    y0, x0 = 2 * cell, w - tw - 2 * cell
    img[y0 : y0 + th, x0 : x0 + tw] = 236.0
    for j, ch in enumerate(text):
        bits = np.array([int(b) for b in _FONT[ch]], dtype=bool).reshape(5, 3)
        glyph = np.kron(bits, np.ones((cell, cell), dtype=bool))
        ys, xs = y0 + 2 * cell, x0 + (2 + 4 * j) * cell
        img[ys : ys + 5 * cell, xs : xs + 3 * cell][glyph] = 28.0


def _render(
    seed: int,
    index: int,
    hw: tuple[int, int],
    *,
    warp: bool = True,
    grain: bool = True,
    label: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Float image (before quantisation) and the subject parameters."""
    p = _draw_params(seed, index)
    h, w = hw
    px = 1.0 / min(h, w)  # template units per pixel (ignoring the small scale of the warp)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    g = _Grid(*_backward(x, y, p if warp else None, hw), px)
    u, v = g.u, g.v

    r = min(h, w) // 2 + 1
    tex = sum(wt * _bspline_raster(t, r) for wt, t in zip((0.6, 0.4), p["tex"], strict=True))
    tex = _sample(1.0 - 2.2 * np.abs(tex), u, v)  # ridged noise: trabecular-like lines
    blob = _sample(_bspline_raster(p["blobs"], 33), u, v)

    # Soft tissue: brighter with depth below the skin, smooth random blobs, darker airway.
    d_skin = np.full((h, w), 1.0, dtype=np.float32)
    skull_soft = (_VAULT_R[0] + 0.035, _VAULT_R[1] + 0.035)
    parts = [
        (_FACE, lambda a, b: _sdf_polygon(a, b, _FACE)),
        (_NECK, lambda a, b: _sdf_polygon(a, b, _NECK)),
        (_box(_VAULT_C, skull_soft), lambda a, b: _sdf_ellipse(a, b, _VAULT_C, skull_soft)),
    ]
    for pts, fn in parts:
        if (win := g.window(pts)) is not None:
            d_skin[win] = np.minimum(d_skin[win], fn(u[win], v[win]))
    depth = np.clip(d_skin * (-1.0 / 0.06), 0.0, 1.0)
    depth = depth * (2.0 - depth)
    img = 20.0 + np.clip(0.5 - d_skin * (1.0 / px), 0.0, 1.0) * (28.0 + 42.0 * depth + 12.0 * blob)
    if (win := g.window(_AIRWAY, 0.02)) is not None:
        air = _sdf_polyline(u[win], v[win], _AIRWAY, 0.012)
        img[win] -= 28.0 * np.clip(0.5 - air * (1.0 / 0.01), 0.0, 1.0) * depth[win]

    # Bones (X-ray projection: attenuations add up).
    bb = p["bone"]
    vb = _box(_VAULT_C, _VAULT_R)
    if (win := g.window(vb)) is not None:
        uw, vw = u[win], v[win]
        (nx0, ny0), (nx1, ny1) = _CUT
        nrm = 1.0 / math.sqrt((nx1 - nx0) * (nx1 - nx0) + (ny1 - ny0) * (ny1 - ny0))
        d_cut = (uw - nx0) * ((ny1 - ny0) * nrm) - (vw - ny0) * ((nx1 - nx0) * nrm)
        outer = _sdf_ellipse(uw, vw, _VAULT_C, _VAULT_R)
        inner = _sdf_ellipse(uw, vw, _VAULT_C, (_VAULT_R[0] - _VAULT_T, _VAULT_R[1] - _VAULT_T))
        brain = np.clip(0.5 - np.maximum(inner, -d_cut) * (1.0 / px), 0.0, 1.0)
        img[win] += brain * (12.0 + 6.0 * blob[win])
        vault = np.maximum(np.maximum(outer, -inner), d_cut)
        img[win] += _bone(vault, px, tex[win], 55 * bb, 110, 40, rim_w=0.008)
    shapes = [
        (_CRANIAL_BASE, 40, 80, 30, 0.010),
        (_NASAL, 60, 50, 10, 0.006),
        (_MAX_BODY, 18, 15, 15, 0.010),
        (_MAXILLA, 50, 80, 30, 0.010),
        (_MANDIBLE, 45, 95, 35, 0.011),
        (_HYOID, 50, 50, 10, 0.006),
    ]
    shapes += [(vert, 40, 85, 35, 0.009) for vert in _VERTEBRAE]
    shapes += [
        (tooth, 95 / bb, 55 / bb, 6, 0.006) for tooth in [_UPPER_INCISOR, _LOWER_INCISOR, *_MOLARS]
    ]
    for verts, base, rim, tx, rim_w in shapes:
        if (win := g.window(verts)) is not None:
            d = _sdf_polygon(u[win], v[win], verts)
            img[win] += _bone(d, px, tex[win], base * bb, rim * bb, tx, rim_w)
    rings = [
        ((_OR[0], _OR[1] - 0.045), (0.05, 0.045), 0.004, 45.0),
        ((_PO[0], _PO[1] + 0.03), (0.03, 0.03), 0.006, 140.0),
    ]
    for c, rr, half, level in rings:
        if (win := g.window(_box(c, rr), half)) is not None:
            d = np.abs(_sdf_ellipse(u[win], v[win], c, rr)) - half
            img[win] += level * np.clip(0.5 - d * (1.0 / px), 0.0, 1.0)
    img *= p["gain"]
    img = np.where(img > 190.0, 190.0 + 65.0 * (img - 190.0) / (img - 125.0), img)  # shoulder

    # Collimator (image space, exactly 0 outside) and film grain on the exposed area only.
    nx, ny = _backward(x, y, None, hw)
    field = np.maximum(
        _sdf_ellipse(nx, ny, _FIELD_C, _FIELD_R),
        np.maximum(np.maximum(0.05 - nx, 0.025 - ny), ny - 0.96),
    )
    expo = np.clip(0.5 - field * (1.0 / px), 0.0, 1.0)
    if grain:
        noise = p["rng"].standard_normal((h, w), dtype=np.float32)
        img = img + noise * (1.2 + 3.0 * np.sqrt(np.clip(img, 0.0, None) * (1.0 / 255.0)))
    img = img * expo
    if label:
        _label(img, f"{index % 10000:04d}-{p['label']:02d}")
    return img, p


def _box(c: tuple[float, float], r: tuple[float, float]) -> list[tuple[float, float]]:
    return [(c[0] - r[0], c[1] - r[1]), (c[0] + r[0], c[1] + r[1])]


def generate(
    index: int, *, seed: int = 0, size: tuple[int, int] = (384, 384), num_landmarks: int = 19
) -> dict[str, Any]:
    """Generate synthetic subject ``index`` of ``seed``.

    Returns a dict with 'image' (uint8, (H, W)), 'landmarks' (float32, (L, 2), x = column,
    y = row, in pixels), 'spacing' (mm per pixel) and 'id' (``f"synthetic-{seed}-{index:04d}"``).
    """
    index = _check_int("index", index, 0)
    seed, hw, num_landmarks = _check_args(seed, size, num_landmarks)
    img, p = _render(seed, index, hw)
    lm = _forward(_TEMPLATE_LANDMARKS[:num_landmarks], p, hw)
    return {
        "image": np.clip(np.round(img), 0, 255).astype(np.uint8),
        "landmarks": lm.astype(np.float32),
        "spacing": FOV_MM / min(hw),
        "id": f"synthetic-{seed}-{index:04d}",
    }


class SyntheticDataset(Sequence):
    """Lazy dataset: ``ds[i]`` is ``generate(i, seed=seed, size=size, ...)``.

    Has the attributes of every dataset returned by ``piaug.data.load``: ``name``, ``ids``,
    ``num_landmarks``, ``source_files`` (none: nothing is read), ``options``, ``report`` (empty)
    and ``image_path(i)`` (None: the images are generated).  Negative indices are refused.
    """

    name = "synthetic"

    def __init__(
        self,
        num_images: int,
        *,
        seed: int = 0,
        size: tuple[int, int] = (384, 384),
        num_landmarks: int = 19,
    ) -> None:
        self.num_images = _check_int("num_images", num_images, 1)
        self.seed, self.size, self.num_landmarks = _check_args(seed, size, num_landmarks)
        self.source_files: list = []
        self.report: list[str] = []
        self.options: dict[str, Any] = {  # ``piaug.data.load`` sets the user's (split, seed)
            "num_images": self.num_images,
            "seed": self.seed,
            "size": list(self.size),
            "num_landmarks": self.num_landmarks,
        }

    @property
    def ids(self) -> list[str]:
        return [f"synthetic-{self.seed}-{i:04d}" for i in range(self.num_images)]

    def image_path(self, i: int) -> None:
        """None: synthetic images have no file."""
        self._check_index(i)
        return None

    def __len__(self) -> int:
        return self.num_images

    def _check_index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"index must be an integer, got {i!r}")
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"index {i} out of range for SyntheticDataset of {self.num_images}")
        return int(i) % self.num_images

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._check_index(i)
        return generate(i, seed=self.seed, size=self.size, num_landmarks=self.num_landmarks)

    def __repr__(self) -> str:
        return (
            f"SyntheticDataset(num_images={self.num_images}, seed={self.seed}, "
            f"size={self.size}, num_landmarks={self.num_landmarks})"
        )


NAME = "synthetic"
SPLITS = ("train", "test")
DEFAULTS: dict[str, Any] = {
    "num_images": 32,
    "seed": 0,
    "size": (768, 768),  # original resolution (height, width)
    "num_landmarks": 19,
}


def load(root: Any = None, split: str | None = None, **options: Any) -> SyntheticDataset:
    """``num_images`` synthetic subjects; ``root`` is ignored (nothing is read). ``split``
    picks a disjoint stream of subjects: ``train`` (default) uses ``seed``, ``test``
    ``seed + 1``."""
    del root
    opts = check_options(NAME, options, DEFAULTS)
    split = check_split(NAME, "train" if split is None else split, SPLITS)
    try:
        seed = int(opts["seed"])
        ds = SyntheticDataset(
            opts["num_images"],
            seed=seed + (split == "test"),
            size=tuple(opts["size"]),
            num_landmarks=opts["num_landmarks"],
        )
    except (TypeError, ValueError) as e:
        raise UserError(f"synthetic dataset: {e}") from None
    ds.options = {
        "split": split,
        "num_images": ds.num_images,
        "seed": seed,
        "size": list(ds.size),
        "num_landmarks": ds.num_landmarks,
    }
    return ds


SPEC = DatasetSpec(
    name=NAME,
    load=load,
    defaults={k: v for k, v in DEFAULTS.items() if k != "seed"},  # the seed is config.seed
    train_split="train",
    eval_split="test",
    description="The built-in synthetic X-ray-like set.",
    seeded=True,
)
