"""Drawing the synthetic subjects of ``piaug.data.synthetic`` (see its docstring): the subject's
random parameters, the warp between image pixels and the template frame, and the rendering of
the anatomy (``piaug.data.anatomy``) as an X-ray-like image.

``draw_params`` draws every anatomy parameter of a subject from ``PCG64(SeedSequence((seed,
index)))``; ``backward`` maps image pixels to template points (a small affine map, then a cubic
Bezier displacement) and ``forward`` inverts it for the landmarks. ``render`` evaluates the
template at every pixel's template point, in named steps: ``_textures``, ``_soft_tissue``,
``_vault``, ``_bones``, ``_film`` (exposure, collimator, grain) and ``_label``. Only +, -, *,
/, sqrt, comparisons and gathers: bit-identical across machines.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from piaug.data.anatomy import (
    AIRWAY,
    CRANIAL_BASE,
    CUT,
    EAR_RING,
    FACE,
    FIELD_C,
    FIELD_R,
    FONT,
    HYOID,
    LOWER_INCISOR,
    MANDIBLE,
    MAX_BODY,
    MAXILLA,
    MOLARS,
    NASAL,
    NECK,
    ORBIT_RING,
    UPPER_INCISOR,
    VAULT_C,
    VAULT_R,
    VAULT_T,
    VERTEBRAE,
)


def draw_params(seed: int, index: int) -> dict[str, Any]:
    """All anatomy parameters of one subject (independent of image size).

    Bounds: landmarks lie in the template box [0.30, 0.88] x [0.42, 0.87]; the rotation and
    scale move them by <= 0.06, the shift by <= 0.03 and the warp by <= 0.03 per coordinate,
    so they stay inside [0.01, 0.99] of the field.  |grad d| <= 6 * 0.03 keeps the warp
    invertible (and the fixed-point inversion in ``forward`` a contraction).
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


def backward(x: np.ndarray, y: np.ndarray, p: dict[str, Any] | None, hw: tuple[int, int]):
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


def forward(q: np.ndarray, p: dict[str, Any] | None, hw: tuple[int, int]) -> np.ndarray:
    """Template points (L, 2) -> image pixel coordinates, the inverse of ``backward``."""
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
        bits = np.array([int(b) for b in FONT[ch]], dtype=bool).reshape(5, 3)
        glyph = np.kron(bits, np.ones((cell, cell), dtype=bool))
        ys, xs = y0 + 2 * cell, x0 + (2 + 4 * j) * cell
        img[ys : ys + 5 * cell, xs : xs + 3 * cell][glyph] = 28.0


def render(
    seed: int,
    index: int,
    hw: tuple[int, int],
    *,
    warp: bool = True,
    grain: bool = True,
    label: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Float image (before quantisation) and the subject parameters: the textures, soft tissue,
    the vault, the other bones, then the film (exposure, collimator, grain and label)."""
    p = draw_params(seed, index)
    h, w = hw
    px = 1.0 / min(h, w)  # template units per pixel (ignoring the small scale of the warp)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    g = _Grid(*backward(x, y, p if warp else None, hw), px)
    tex, blob = _textures(p, g, hw)
    img = _soft_tissue(g, blob, hw)
    # Bones (X-ray projection: attenuations add up).
    _vault(img, g, tex, blob, p["bone"])
    _bones(img, g, tex, p["bone"])
    img = _film(img, p, x, y, hw, px, grain=grain)
    if label:
        _label(img, f"{index % 10000:04d}-{p['label']:02d}")
    return img, p


def _textures(p: dict[str, Any], g: _Grid, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The bones' texture (ridged B-spline noise: trabecular-like lines) and the soft tissue's
    smooth blobs, at every pixel."""
    h, w = hw
    r = min(h, w) // 2 + 1
    tex = sum(wt * _bspline_raster(t, r) for wt, t in zip((0.6, 0.4), p["tex"], strict=True))
    tex = _sample(1.0 - 2.2 * np.abs(tex), g.u, g.v)  # ridged noise: trabecular-like lines
    blob = _sample(_bspline_raster(p["blobs"], 33), g.u, g.v)
    return tex, blob


def _soft_tissue(g: _Grid, blob: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Soft tissue: brighter with depth below the skin, smooth random blobs, darker airway."""
    h, w = hw
    u, v, px = g.u, g.v, g.px
    d_skin = np.full((h, w), 1.0, dtype=np.float32)
    skull_soft = (VAULT_R[0] + 0.035, VAULT_R[1] + 0.035)
    parts = [
        (FACE, lambda a, b: _sdf_polygon(a, b, FACE)),
        (NECK, lambda a, b: _sdf_polygon(a, b, NECK)),
        (_box(VAULT_C, skull_soft), lambda a, b: _sdf_ellipse(a, b, VAULT_C, skull_soft)),
    ]
    for pts, fn in parts:
        if (win := g.window(pts)) is not None:
            d_skin[win] = np.minimum(d_skin[win], fn(u[win], v[win]))
    depth = np.clip(d_skin * (-1.0 / 0.06), 0.0, 1.0)
    depth = depth * (2.0 - depth)
    img = 20.0 + np.clip(0.5 - d_skin * (1.0 / px), 0.0, 1.0) * (28.0 + 42.0 * depth + 12.0 * blob)
    if (win := g.window(AIRWAY, 0.02)) is not None:
        air = _sdf_polyline(u[win], v[win], AIRWAY, 0.012)
        img[win] -= 28.0 * np.clip(0.5 - air * (1.0 / 0.01), 0.0, 1.0) * depth[win]
    return img


def _vault(img: np.ndarray, g: _Grid, tex: np.ndarray, blob: np.ndarray, bb: float) -> None:
    """Adds the skull vault (an elliptic shell above the cranial-base line) and the brain
    inside it to ``img``, in place; ``bb`` is the subject's bone density."""
    px = g.px
    if (win := g.window(_box(VAULT_C, VAULT_R))) is not None:
        uw, vw = g.u[win], g.v[win]
        (nx0, ny0), (nx1, ny1) = CUT
        nrm = 1.0 / math.sqrt((nx1 - nx0) * (nx1 - nx0) + (ny1 - ny0) * (ny1 - ny0))
        d_cut = (uw - nx0) * ((ny1 - ny0) * nrm) - (vw - ny0) * ((nx1 - nx0) * nrm)
        outer = _sdf_ellipse(uw, vw, VAULT_C, VAULT_R)
        inner = _sdf_ellipse(uw, vw, VAULT_C, (VAULT_R[0] - VAULT_T, VAULT_R[1] - VAULT_T))
        brain = np.clip(0.5 - np.maximum(inner, -d_cut) * (1.0 / px), 0.0, 1.0)
        img[win] += brain * (12.0 + 6.0 * blob[win])
        vault = np.maximum(np.maximum(outer, -inner), d_cut)
        img[win] += _bone(vault, px, tex[win], 55 * bb, 110, 40, rim_w=0.008)


def _bones(img: np.ndarray, g: _Grid, tex: np.ndarray, bb: float) -> None:
    """Adds the other bones (polygons with a cortical rim), the teeth and the orbit and ear-rod
    rings to ``img``, in place; ``bb`` is the subject's bone density."""
    u, v, px = g.u, g.v, g.px
    shapes = [  # outline, base, rim, texture, rim width
        (CRANIAL_BASE, 40, 80, 30, 0.010),
        (NASAL, 60, 50, 10, 0.006),
        (MAX_BODY, 18, 15, 15, 0.010),
        (MAXILLA, 50, 80, 30, 0.010),
        (MANDIBLE, 45, 95, 35, 0.011),
        (HYOID, 50, 50, 10, 0.006),
    ]
    shapes += [(vert, 40, 85, 35, 0.009) for vert in VERTEBRAE]
    shapes += [
        (tooth, 95 / bb, 55 / bb, 6, 0.006) for tooth in [UPPER_INCISOR, LOWER_INCISOR, *MOLARS]
    ]
    for verts, base, rim, tx, rim_w in shapes:
        if (win := g.window(verts)) is not None:
            d = _sdf_polygon(u[win], v[win], verts)
            img[win] += _bone(d, px, tex[win], base * bb, rim * bb, tx, rim_w)
    rings = [(*ORBIT_RING, 0.004, 45.0), (*EAR_RING, 0.006, 140.0)]  # half width, level
    for c, rr, half, level in rings:
        if (win := g.window(_box(c, rr), half)) is not None:
            d = np.abs(_sdf_ellipse(u[win], v[win], c, rr)) - half
            img[win] += level * np.clip(0.5 - d * (1.0 / px), 0.0, 1.0)


def _film(
    img: np.ndarray,
    p: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    hw: tuple[int, int],
    px: float,
    *,
    grain: bool,
) -> np.ndarray:
    """The exposure: the subject's gain and a shoulder above 190, the collimator (image space,
    exactly 0 outside) and film grain on the exposed area only."""
    h, w = hw
    img *= p["gain"]
    img = np.where(img > 190.0, 190.0 + 65.0 * (img - 190.0) / (img - 125.0), img)  # shoulder
    nx, ny = backward(x, y, None, hw)
    field = np.maximum(
        _sdf_ellipse(nx, ny, FIELD_C, FIELD_R),
        np.maximum(np.maximum(0.05 - nx, 0.025 - ny), ny - 0.96),
    )
    expo = np.clip(0.5 - field * (1.0 / px), 0.0, 1.0)
    if grain:
        noise = p["rng"].standard_normal((h, w), dtype=np.float32)
        img = img + noise * (1.2 + 3.0 * np.sqrt(np.clip(img, 0.0, None) * (1.0 / 255.0)))
    return img * expo


def _box(c: tuple[float, float], r: tuple[float, float]) -> list[tuple[float, float]]:
    return [(c[0] - r[0], c[1] - r[1]), (c[0] + r[0], c[1] + r[1])]
