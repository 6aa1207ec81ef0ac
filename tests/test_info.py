"""Tests for piaug.info: entropy maps, footprints, mutual information, weight maps, sampler.

Compile time dominates: every distinct (footprint, image shape) compiles the entropy kernel once,
so the tests reuse a few image shapes across footprints.
"""

import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.morphology as skm
from skimage.filters.rank import entropy as sk_entropy
from sklearn.metrics import mutual_info_score

from piaug import info

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CEPH_001 = DATA / "isbi2015_ceph_train" / "images" / "001.jpg"
HAND_DIR = DATA / "hand_xray_sample" / "images"

HAND_TOL = 1e-6  # hand-computed values
SKIMAGE_TOL = 1e-4  # entropy_map vs skimage.filters.rank.entropy
SKLEARN_TOL = 1e-5  # mutual information vs sklearn


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _random_uint8(shape, seed: int, high: int = 256) -> np.ndarray:
    return _rng(seed).integers(0, high, shape, dtype=np.uint8)


def _bits(*counts: int) -> float:
    """Shannon entropy in bits of a histogram given by its counts."""
    p = np.asarray(counts, float) / sum(counts)
    return float(-(p * np.log2(p)).sum())


def _nats(*counts: int) -> float:
    """Shannon entropy in nats of a histogram given by its counts."""
    p = np.asarray(counts, float) / sum(counts)
    return float(-(p * np.log(p)).sum())


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"../shared/data not found: {path} is missing (real radiographs live there)")
    return path


def _imread_gray(path: Path) -> np.ndarray:
    from skimage import io

    image = io.imread(_require(path))
    if image.ndim == 3:
        image = image[..., 0]
    assert image.dtype == np.uint8
    return image


def _direct_entropy(image: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Per-pixel entropy in bits of the in-image values under the footprint centred at
    ``shape // 2``: the definition, computed voxel by voxel (any number of dimensions)."""
    offsets = np.argwhere(footprint) - np.array(footprint.shape) // 2
    out = np.zeros(image.shape)
    for index in np.ndindex(image.shape):
        pos = offsets + np.array(index)
        inside = np.all((pos >= 0) & (pos < np.array(image.shape)), axis=1)
        _, counts = np.unique(image[tuple(pos[inside].T)], return_counts=True)
        out[index] = _bits(*counts)
    return out


def _sk_mi(a: np.ndarray, b: np.ndarray, patch_ndim: int = 2) -> np.ndarray:
    batch = a.shape[: a.ndim - patch_ndim]
    a2, b2 = a.reshape(int(np.prod(batch)), -1), b.reshape(int(np.prod(batch)), -1)
    return np.array([mutual_info_score(x, y) for x, y in zip(a2, b2, strict=True)]).reshape(batch)


def _sk_count_vector_mi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    batch = a.shape[:-2]
    a2, b2 = a.reshape(int(np.prod(batch)), -1), b.reshape(int(np.prod(batch)), -1)
    out = [
        mutual_info_score(np.bincount(x, minlength=256), np.bincount(y, minlength=256))
        for x, y in zip(a2, b2, strict=True)
    ]
    return np.array(out).reshape(batch)


# ---------------------------------------------------------------------------------------------
# Entropy: hand-computed values.


def test_constants():
    assert info.NUM_BINS == 256
    assert info.GROUP_NAMES == ("low", "medium", "high")


def test_entropy_checkerboard_interior_by_hand():
    board = ((np.add.outer(np.arange(8), np.arange(9)) % 2) * 200).astype(np.uint8)
    # 3x3 square: 5 pixels share the centre's colour, 4 have the other one.
    out = np.asarray(info.entropy_map(board, info.square(3)))
    expected = -(5 / 9 * math.log2(5 / 9) + 4 / 9 * math.log2(4 / 9))
    assert abs(expected - 0.9910760598) < 1e-9
    np.testing.assert_allclose(out[1:-1, 1:-1], expected, rtol=0, atol=HAND_TOL)
    # Corner: 4 pixels inside, 2 of each colour -> 1 bit. Edge: 6 inside, 3 of each -> 1 bit.
    np.testing.assert_allclose(out[[0, 0, -1, -1], [0, -1, 0, -1]], 1.0, atol=HAND_TOL)
    np.testing.assert_allclose(out[0, 1:-1], 1.0, atol=HAND_TOL)
    # disk(1): the centre and its 4 neighbours, which all have the other colour.
    out = np.asarray(info.entropy_map(board, info.disk(1)))
    np.testing.assert_allclose(out[1:-1, 1:-1], _bits(1, 4), atol=HAND_TOL)
    np.testing.assert_allclose(out[0, 0], _bits(1, 2), atol=HAND_TOL)  # 3 inside


def test_entropy_border_pixels_by_hand():
    image = np.zeros((5, 6), np.uint8)
    image[:2, :2] = [[1, 2], [3, 3]]
    out = np.asarray(info.entropy_map(image, info.square(3)))
    # Corner (0, 0): only (0,0), (0,1), (1,0), (1,1) are inside: values 1, 2, 3, 3.
    assert out[0, 0] == pytest.approx(1.5, abs=HAND_TOL)
    # Edge (0, 2): 6 pixels inside, values 2, 0, 0 / 3, 0, 0.
    assert out[0, 2] == pytest.approx(_bits(4, 1, 1), abs=HAND_TOL)
    # Interior (1, 1): the whole 2x2 block plus five zeros.
    assert out[1, 1] == pytest.approx(_bits(5, 1, 1, 2), abs=HAND_TOL)
    # Far from the block everything is 0.
    np.testing.assert_allclose(out[3:, 3:], 0.0, atol=HAND_TOL)


def test_entropy_even_footprint_centre_by_hand():
    # square(2) is centred at (1, 1): the window of (i, j) is rows i-1..i, columns j-1..j.
    image = np.array([[0, 1], [2, 2]], np.uint8)
    out = np.asarray(info.entropy_map(image, info.square(2)))
    np.testing.assert_allclose(out, [[0.0, 1.0], [1.0, 1.5]], atol=HAND_TOL)


@pytest.mark.parametrize("footprint", [info.disk(2), info.square(4), info.square(1)])
def test_entropy_constant_image_is_zero(footprint):
    out = np.asarray(info.entropy_map(np.full((9, 11), 77, np.uint8), footprint))
    assert out.shape == (9, 11) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.0, atol=HAND_TOL)


def test_entropy_all_distinct_values_by_hand():
    # 16 x 16 distinct gray values: an interior 3x3 window holds 9 distinct values.
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = np.asarray(info.entropy_map(image, info.square(3)))
    np.testing.assert_allclose(out[1:-1, 1:-1], math.log2(9), atol=HAND_TOL)
    np.testing.assert_allclose(out[0, 0], 2.0, atol=HAND_TOL)


# ---------------------------------------------------------------------------------------------
# Entropy: skimage reference.

SK_FOOTPRINTS = [("disk", r) for r in range(1, 13)] + [("square", s) for s in range(2, 17)]
# The fast tier checks these (small and large, odd and even squares, the paper's disk(10));
# the slow tier every size (each compiles its own kernel, about a second apiece).
FAST_FOOTPRINTS = {("disk", 1), ("disk", 4), ("disk", 10), ("square", 2), ("square", 7)}
SK_PARAMS = [
    pytest.param(k, s, id=f"{k}{s}", marks=() if (k, s) in FAST_FOOTPRINTS else pytest.mark.slow)
    for k, s in SK_FOOTPRINTS
]


def _footprints(kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(ours, skimage's) footprint."""
    if kind == "disk":
        return info.disk(size), skm.disk(size)
    return info.square(size), skm.footprint_rectangle((size, size))


@pytest.mark.parametrize("kind,size", SK_PARAMS)
def test_entropy_matches_skimage(kind, size):
    ours, ref = _footprints(kind, size)
    images = [
        _random_uint8((45, 61), seed=size),  # non-square, random
        np.full((45, 61), 200, np.uint8),  # constant (same shape: no recompile)
        _random_uint8((3, 5), seed=100 + size),  # smaller than most footprints
        np.full((3, 5), 9, np.uint8),
    ]
    for image in images:
        out = np.asarray(info.entropy_map(image, ours))
        expected = sk_entropy(image, ref)
        assert out.shape == image.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=0, atol=SKIMAGE_TOL)


@pytest.mark.parametrize("kind,size", [("disk", 1), ("disk", 7), ("square", 5), ("square", 16)])
def test_entropy_matches_skimage_square_image(kind, size):
    ours, ref = _footprints(kind, size)
    image = _random_uint8((40, 40), seed=7, high=40)
    np.testing.assert_allclose(
        info.entropy_map(image, ours), sk_entropy(image, ref), rtol=0, atol=SKIMAGE_TOL
    )


def test_entropy_smaller_than_footprint_radius_12():
    image = _random_uint8((3, 5), seed=3)
    out = np.asarray(info.entropy_map(image, info.disk(12)))
    np.testing.assert_allclose(out, sk_entropy(image, skm.disk(12)), rtol=0, atol=SKIMAGE_TOL)
    # Every pixel sees the whole image.
    _, counts = np.unique(image, return_counts=True)
    np.testing.assert_allclose(out, _bits(*counts), atol=HAND_TOL)


@pytest.mark.slow  # a whole 2400 x 1935 radiograph: the fast tier checks a hand crop
def test_entropy_matches_skimage_on_full_ceph_image():
    image = _imread_gray(CEPH_001)
    assert image.shape == (2400, 1935)
    out = np.asarray(info.entropy_map(image, info.disk(10)))
    expected = sk_entropy(image, skm.disk(10))
    np.testing.assert_allclose(out, expected, rtol=0, atol=SKIMAGE_TOL)
    assert out.max() > 3.0  # a real radiograph, not a blank one


@pytest.mark.parametrize("radius", [3, 8])
def test_entropy_matches_skimage_on_hand_crop(radius):
    paths = sorted(_require(HAND_DIR).glob("*.png"))
    if not paths:
        pytest.skip(f"../shared/data not found: no hand radiographs (*.png) in {HAND_DIR}")
    image = _imread_gray(paths[0])
    r0, c0 = image.shape[0] // 2 - 200, image.shape[1] // 2 - 200
    crop = np.ascontiguousarray(image[r0 : r0 + 400, c0 : c0 + 400])
    out = np.asarray(info.entropy_map(crop, info.disk(radius)))
    expected = sk_entropy(crop, skm.disk(radius))
    np.testing.assert_allclose(out, expected, rtol=0, atol=SKIMAGE_TOL)
    assert out.std() > 0.1


def test_entropy_batched_equals_each_alone():
    images = np.stack(
        [_random_uint8((32, 32), seed=1), _random_uint8((32, 32), seed=2, high=8)]
        + [np.full((32, 32), 3, np.uint8)]
    )
    footprint = info.disk(4)
    batched = np.asarray(info.entropy_map(images, footprint))
    assert batched.shape == (3, 32, 32)
    for image, out in zip(images, batched, strict=True):
        np.testing.assert_array_equal(out, info.entropy_map(image, footprint))
        np.testing.assert_allclose(out, sk_entropy(image, skm.disk(4)), atol=SKIMAGE_TOL)
    # Extra leading batch axes.
    nested = np.asarray(info.entropy_map(images[None], footprint))
    np.testing.assert_array_equal(nested[0], batched)


def test_entropy_tile_and_threads_do_not_change_the_result():
    image = _random_uint8((45, 61), seed=11)
    footprint = info.disk(3)
    base = np.asarray(info.entropy_map(image, footprint))
    np.testing.assert_allclose(base, sk_entropy(image, skm.disk(3)), atol=SKIMAGE_TOL)
    for kwargs in (
        dict(tile=7),  # does not divide the width 61
        dict(tile=1),
        dict(tile=500),  # larger than the width
        dict(threads=1),
        dict(threads=3),
        dict(threads=4, tile=16),  # 45 rows are not a multiple of 4
    ):
        out = np.asarray(info.entropy_map(image, footprint, **kwargs))
        np.testing.assert_array_equal(out, base, err_msg=str(kwargs))


@pytest.mark.slow  # compiles the kernel for disk(12): the fast tier stays under 3 minutes
def test_entropy_kernel_holds_no_constant_the_size_of_footprint_times_rows(monkeypatch):
    """The first window's gather keeps its indices at (footprint pixels, axes): indices
    broadcast to every row made XLA fold a constant of footprint x rows elements (79 MB, over
    a second of compiling, for disk(128) at 192 x 192)."""
    compiled = []

    def spy(kernel, *specs, **static):
        args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in specs]
        out = kernel.lower(*args, **static).compile()
        compiled.append(out.as_text())
        return out

    monkeypatch.setattr(info, "_compiled", spy)
    image = _random_uint8((32, 32), seed=3)
    footprint = info.disk(12)
    out = info.entropy_map(image, footprint, threads=1)
    np.testing.assert_allclose(out, sk_entropy(image, skm.disk(12)), atol=SKIMAGE_TOL)
    n_fp = int(footprint.sum())
    sizes = [
        math.prod(int(d) for d in dims.split(",") if d)
        for text in compiled
        for dims in re.findall(r"s32\[([\d,]*)\][^ ]* constant\(", text)
    ]
    assert compiled and max(sizes, default=0) <= 4 * n_fp, sorted(sizes)[-3:]


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1)])
def test_entropy_degenerate_shapes(shape):
    image = _random_uint8(shape, seed=5)
    for ours, ref in (_footprints("disk", 1), _footprints("square", 4)):
        np.testing.assert_allclose(
            info.entropy_map(image, ours), sk_entropy(image, ref), atol=SKIMAGE_TOL
        )


def test_entropy_footprint_must_be_concrete():
    with pytest.raises(ValueError, match="footprint must be a concrete"):
        jax.jit(lambda fp: info.entropy_map(np.zeros((5, 5), np.uint8), fp))(info.disk(1))


def test_entropy_accepts_0_1_footprint_and_jax_image():
    image = _random_uint8((10, 12), seed=8)
    expected = np.asarray(info.entropy_map(image, info.disk(2)))
    np.testing.assert_array_equal(info.entropy_map(image, info.disk(2).astype(np.uint8)), expected)
    np.testing.assert_array_equal(info.entropy_map(jnp.asarray(image), info.disk(2)), expected)


# ---------------------------------------------------------------------------------------------
# Footprints.


@pytest.mark.parametrize("radius", range(13))
def test_disk_equals_skimage(radius):
    fp = info.disk(radius)
    assert fp.dtype == bool and fp.shape == (2 * radius + 1,) * 2
    np.testing.assert_array_equal(fp, skm.disk(radius).astype(bool))


@pytest.mark.parametrize("radius", range(6))
def test_ball_equals_skimage(radius):
    fp = info.ball(radius)
    assert fp.dtype == bool and fp.shape == (2 * radius + 1,) * 3
    np.testing.assert_array_equal(fp, skm.ball(radius).astype(bool))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 16])
def test_square_and_cube_equal_footprint_rectangle(size):
    sq, cb = info.square(size), info.cube(size)
    assert sq.dtype == bool and cb.dtype == bool
    np.testing.assert_array_equal(sq, skm.footprint_rectangle((size, size)).astype(bool))
    np.testing.assert_array_equal(cb, skm.footprint_rectangle((size,) * 3).astype(bool))


def test_integral_float_and_numpy_radius_are_accepted():
    np.testing.assert_array_equal(info.disk(2.0), info.disk(2))
    np.testing.assert_array_equal(info.disk(np.int64(3)), info.disk(3))


@pytest.mark.parametrize("fn", [info.disk, info.ball])
@pytest.mark.parametrize("radius", [-1, 2.5, True, False, np.float64(1.5)])
def test_bad_radius(fn, radius):
    with pytest.raises(ValueError, match="radius must be an integer >= 0"):
        fn(radius)


@pytest.mark.parametrize("fn", [info.square, info.cube])
@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_size(fn, size):
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        fn(size)


# ---------------------------------------------------------------------------------------------
# 3-D.

VOLUMES = [
    _random_uint8((6, 7, 9), seed=21, high=4),  # few values: repeated counts
    _random_uint8((6, 7, 9), seed=22),  # uint8 range: mostly distinct
]


@pytest.mark.parametrize(
    "footprint",
    [info.ball(1), info.ball(2), info.cube(2), info.cube(3)],
    ids=["ball1", "ball2", "cube2", "cube3"],
)
def test_entropy_3d_matches_direct_computation(footprint):
    expected = [_direct_entropy(v, footprint) for v in VOLUMES]
    for volume, ref in zip(VOLUMES, expected, strict=True):
        out = np.asarray(info.entropy_map(volume, footprint))
        assert out.shape == volume.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=0, atol=SKIMAGE_TOL)
    batched = np.asarray(info.entropy_map(np.stack(VOLUMES), footprint))
    assert batched.shape == (2, 6, 7, 9)
    for out, ref in zip(batched, expected, strict=True):
        np.testing.assert_allclose(out, ref, rtol=0, atol=SKIMAGE_TOL)


def test_direct_reference_agrees_with_skimage_in_2d():
    # Guards the 3-D reference itself.
    image = _random_uint8((9, 11), seed=4, high=5)
    np.testing.assert_allclose(
        _direct_entropy(image, info.disk(2)), sk_entropy(image, skm.disk(2)), atol=1e-12
    )


def test_entropy_3d_by_hand():
    volume = np.zeros((3, 3, 3), np.uint8)
    volume[1, 1, 1] = 5
    out = np.asarray(info.entropy_map(volume, info.ball(1)))
    # Centre: itself and 6 zero neighbours. The centre of a face: 6 in-volume voxels, one of
    # them the 5. A corner: 4 in-volume voxels, all zero.
    assert out[1, 1, 1] == pytest.approx(_bits(1, 6), abs=HAND_TOL)
    assert out[0, 1, 1] == pytest.approx(_bits(1, 5), abs=HAND_TOL)
    assert out[0, 0, 0] == pytest.approx(0.0, abs=HAND_TOL)


# ---------------------------------------------------------------------------------------------
# Mutual information: hand-computed values.


@pytest.mark.parametrize("k", [1, 2, 4, 16, 256])
def test_mi_identical_patches_is_log_k(k):
    a = (np.arange(256) % k).astype(np.uint8).reshape(16, 16)
    assert float(info.mutual_information(a, a)) == pytest.approx(math.log(k), abs=HAND_TOL)


def test_mi_independent_by_construction_is_zero():
    a = np.array([[0, 0], [1, 1]], np.uint8)
    b = np.array([[0, 1], [0, 1]], np.uint8)
    assert float(info.mutual_information(a, b)) == pytest.approx(0.0, abs=HAND_TOL)
    rows, cols = np.mgrid[0:8, 0:12]  # joint histogram = product of the marginals
    a, b = (rows % 4).astype(np.uint8), (cols * 20 % 240).astype(np.uint8)
    assert float(info.mutual_information(a, b)) == pytest.approx(0.0, abs=HAND_TOL)


def test_mi_constant_patches_are_exactly_zero():
    a, b = np.full((16, 16), 9, np.uint8), np.full((16, 16), 250, np.uint8)
    assert float(info.mutual_information(a, b)) == 0.0  # the terms cancel exactly
    rows, cols = np.mgrid[0:32, 0:32]  # independent by construction
    a, b = (rows % 2).astype(np.uint8), (cols % 2).astype(np.uint8)
    assert float(info.mutual_information(a, b)) == pytest.approx(0.0, abs=HAND_TOL)  # 3.3e-6


def test_mi_deterministic_non_injective_mapping():
    # b = f(a) with f(0) = f(1) = 0, f(2) = 1: MI = H(b).
    a = np.array([[0, 0], [1, 2]], np.uint8)
    b = np.array([[7, 7], [7, 9]], np.uint8)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(info.mutual_information(a, b)) == pytest.approx(expected, abs=HAND_TOL)
    assert float(info.mutual_information(b, a)) == pytest.approx(expected, abs=HAND_TOL)
    # A larger one: a in 0..15 equally often, b = a // 4 (4 equally frequent values).
    a = np.arange(64, dtype=np.uint8).reshape(8, 8) % 16
    assert float(info.mutual_information(a, a // 4)) == pytest.approx(math.log(4), abs=HAND_TOL)


def test_count_vector_mi_by_hand():
    # A constant patch: its count vector has one entry 16 and 255 zeros; with itself the MI is
    # the entropy of that label distribution.
    a = np.full((4, 4), 3, np.uint8)
    got = float(info.count_vector_mutual_information(a, a))
    assert got == pytest.approx(_nats(1, 255), abs=HAND_TOL)  # off by 2.8e-6
    # Another constant value: the labels (16, 0) and (0, 16) once each, (0, 0) 254 times.
    b = np.full((4, 4), 7, np.uint8)
    expected = 2 / 256 * math.log(256 / 255) + 254 / 256 * math.log(254 * 256 / 255**2)
    got = float(info.count_vector_mutual_information(a, b))
    assert got == pytest.approx(expected, abs=HAND_TOL)  # 2.4e-5 instead of 1.5e-5


def test_count_vector_mi_ignores_pixel_positions():
    # Count vectors ignore where pixels are: a shuffled patch gives the same value.
    b = _random_uint8((8, 8), seed=2, high=5)
    shuffled = _rng(3).permutation(b.ravel()).reshape(8, 8)
    c = _random_uint8((8, 8), seed=4, high=5)
    np.testing.assert_allclose(
        info.count_vector_mutual_information(b, c),
        info.count_vector_mutual_information(shuffled, c),
        atol=HAND_TOL,
    )


# ---------------------------------------------------------------------------------------------
# Mutual information: sklearn reference.


def _mi_cases():
    rng = _rng(0)
    a = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    noisy = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    few = rng.integers(0, 4, (16, 16), dtype=np.uint8)
    odd = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    big = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    return {
        "random": (a, rng.integers(0, 256, (16, 16), dtype=np.uint8)),
        "correlated": (a, noisy),
        "identical": (a, a),
        "few_values": (few, (few * 3 + rng.integers(0, 2, few.shape)).astype(np.uint8)),
        "constant": (np.full((16, 16), 9, np.uint8), a),
        "both_constant": (np.full((16, 16), 9, np.uint8), np.full((16, 16), 250, np.uint8)),
        "odd_7x9": (odd, (odd // 16).astype(np.uint8)),
        "big_64x64": (
            big,
            np.clip(big.astype(int) + rng.integers(-20, 21, big.shape), 0, 255).astype(np.uint8),
        ),
    }


MI_CASES = _mi_cases()


@pytest.mark.parametrize("name", list(MI_CASES))
def test_mi_matches_sklearn(name):
    a, b = MI_CASES[name]
    out = info.mutual_information(a, b)
    assert out.shape == () and out.dtype == jnp.float32
    assert float(out) == pytest.approx(mutual_info_score(a.ravel(), b.ravel()), abs=SKLEARN_TOL)
    if "constant" in name:
        assert float(out) == pytest.approx(0.0, abs=SKLEARN_TOL)


def test_mi_batched_matches_sklearn():
    rng = _rng(1)
    a = rng.integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-5, 6, a.shape), 0, 255).astype(np.uint8)
    b[0, 0] = 17  # a constant patch in the batch
    b[1] = rng.integers(0, 256, b[1].shape, dtype=np.uint8)
    out = np.asarray(info.mutual_information(a, b))
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out, _sk_mi(a, b), rtol=0, atol=SKLEARN_TOL)
    # Each pair alone gives the same as in the batch.
    assert float(info.mutual_information(a[4, 2], b[4, 2])) == pytest.approx(out[4, 2], abs=1e-6)


@pytest.mark.parametrize("patch_ndim,shape", [(1, (6, 50)), (3, (2, 4, 5, 6)), (2, (3, 7, 9))])
def test_mi_patch_ndim(patch_ndim, shape):
    rng = _rng(patch_ndim)
    a = rng.integers(0, 8, shape, dtype=np.uint8)
    b = ((a.astype(int) * 5 + rng.integers(0, 3, shape)) % 256).astype(np.uint8)
    out = np.asarray(info.mutual_information(a, b, patch_ndim=patch_ndim))
    assert out.shape == shape[: len(shape) - patch_ndim]
    np.testing.assert_allclose(out, _sk_mi(a, b, patch_ndim), rtol=0, atol=SKLEARN_TOL)


def test_mi_chunk_remainder_and_threads():
    rng = _rng(2)
    a = rng.integers(0, 256, (37, 8, 8), dtype=np.uint8)
    b = np.where(rng.random(a.shape) < 0.5, a, rng.integers(0, 256, a.shape)).astype(np.uint8)
    expected = _sk_mi(a, b)
    one = np.asarray(info.mutual_information(a, b, chunk=16, threads=1))
    two = np.asarray(info.mutual_information(a, b, chunk=16, threads=2))
    assert one.shape == two.shape == (37,)
    np.testing.assert_allclose(one, expected, rtol=0, atol=SKLEARN_TOL)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-6)
    np.testing.assert_allclose(info.mutual_information(a, b, chunk=5), one, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 16), (7, 9), (4, 16, 16)])
def test_count_vector_mi_matches_sklearn(shape):
    rng = _rng(len(shape) + shape[-1])
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = rng.integers(0, 64, shape, dtype=np.uint8)
    if len(shape) == 3:
        b[1] = a[1]  # identical
        a[2] = 0  # constant
    out = np.asarray(info.count_vector_mutual_information(a, b))
    assert out.shape == shape[:-2]
    np.testing.assert_allclose(out, _sk_count_vector_mi(a, b), rtol=0, atol=SKLEARN_TOL)


def test_count_vector_mi_threads_and_chunk():
    a = _random_uint8((21, 6, 6), seed=31, high=10)
    b = _random_uint8((21, 6, 6), seed=32, high=10)
    expected = _sk_count_vector_mi(a, b)
    for kwargs in (dict(threads=1), dict(threads=2, chunk=4)):
        out = info.count_vector_mutual_information(a, b, **kwargs)
        np.testing.assert_allclose(out, expected, rtol=0, atol=SKLEARN_TOL, err_msg=str(kwargs))


@pytest.mark.parametrize("fn", [info.mutual_information, info.count_vector_mutual_information])
def test_mi_empty_batch(fn):
    a = np.zeros((0, 3, 4, 4), np.uint8)
    assert fn(a, a).shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# jit and non-jit agreement.


@pytest.mark.parametrize(
    "image,footprint",
    [
        (_random_uint8((20, 23), seed=41), info.disk(3)),
        (_random_uint8((2, 20, 23), seed=42, high=16), info.square(4)),
        (VOLUMES[0], info.ball(1)),
    ],
    ids=["disk3", "batched_square4", "ball1"],
)
def test_entropy_jit_equals_eager(image, footprint):
    eager = np.asarray(info.entropy_map(image, footprint))
    jitted = np.asarray(jax.jit(lambda x: info.entropy_map(x, footprint))(image))
    assert jitted.shape == eager.shape == image.shape
    np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-6)


def test_mi_jit_equals_eager():
    rng = _rng(5)
    a = rng.integers(0, 256, (37, 8, 8), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    for fn in (info.mutual_information, info.count_vector_mutual_information):
        eager = np.asarray(fn(a, b, chunk=16))
        jitted = np.asarray(jax.jit(lambda x, y, fn=fn: fn(x, y, chunk=16))(a, b))
        assert jitted.shape == (37,)
        np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-6, err_msg=fn.__name__)
    np.testing.assert_allclose(
        jax.jit(info.mutual_information)(a, b), _sk_mi(a, b), rtol=0, atol=SKLEARN_TOL
    )


def test_weight_maps_and_groups_jit_equal_eager():
    iie = np.linspace(0.0, 8.0, 35, dtype=np.float32).reshape(5, 7)
    for kwargs in (
        dict(kind="exponential", gamma=0.3),
        dict(kind="exponential", gamma=0.0),
        dict(kind="piecewise", d=2.0),
        dict(kind="uniform"),
    ):
        eager = info.weight_map(iie, **kwargs)
        jitted = jax.jit(lambda x, kwargs=kwargs: info.weight_map(x, **kwargs))(iie)
        np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=0, err_msg=str(kwargs))
    # Traced gamma, d and thresholds.
    np.testing.assert_allclose(
        jax.jit(info.exponential_weights)(iie, 0.7), iie**0.7, rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(jax.jit(info.piecewise_weights)(iie, 3.0), iie >= 3.0)
    groups = jax.jit(lambda x: info.information_groups(x, (1.0, 6.0)))(iie)
    np.testing.assert_array_equal(groups, (iie >= 1.0).astype(int) + (iie >= 6.0))
    np.testing.assert_array_equal(
        jax.jit(info.information_groups)(iie), info.information_groups(iie)
    )


# ---------------------------------------------------------------------------------------------
# Weight maps and groups.

IIE = np.array([0.0, 0.01, 0.5, 1.0, 1.99, 2.0, 2.01, 4.5, 7.9], np.float32)


@pytest.mark.parametrize("gamma", [0.3, 0.5, 1.0, 2.0])
def test_exponential_weights(gamma):
    out = np.asarray(info.exponential_weights(IIE, gamma))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, IIE.astype(np.float64) ** gamma, rtol=1e-6, atol=1e-7)
    assert out[0] == 0.0  # no information, no weight


def test_exponential_weights_gamma_zero_is_uniform():
    out = np.asarray(info.exponential_weights(IIE, 0.0))
    np.testing.assert_array_equal(out, np.ones_like(IIE))  # including iie == 0
    np.testing.assert_array_equal(info.exponential_weights(np.zeros((2, 3)), 0), np.ones((2, 3)))


def test_exponential_weights_default_gamma():
    np.testing.assert_allclose(info.exponential_weights(IIE), IIE**0.3, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("d", [0.0, 1.99, 2.0, 4.5, 10.0])
def test_piecewise_weights(d):
    out = np.asarray(info.piecewise_weights(IIE, d))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (IIE >= np.float32(d)).astype(np.float32))


def test_piecewise_weights_default_threshold():
    np.testing.assert_array_equal(info.piecewise_weights(IIE), [0, 0, 0, 0, 0, 1, 1, 1, 1])


def test_weight_map_dispatch():
    iie = IIE.reshape(3, 3)
    np.testing.assert_array_equal(
        info.weight_map(iie, kind="exponential", gamma=0.7), info.exponential_weights(iie, 0.7)
    )
    np.testing.assert_array_equal(info.weight_map(iie), info.exponential_weights(iie, 0.3))
    np.testing.assert_array_equal(
        info.weight_map(iie, kind="piecewise", d=1.0), info.piecewise_weights(iie, 1.0)
    )
    np.testing.assert_array_equal(info.weight_map(iie, kind="piecewise"), iie >= 2.0)
    uniform = info.weight_map(iie, kind="uniform")
    assert uniform.shape == (3, 3) and uniform.dtype == jnp.float32
    np.testing.assert_array_equal(uniform, np.ones((3, 3)))
    with pytest.raises(ValueError, match="kind must be exponential, piecewise or uniform.*gauss"):
        info.weight_map(iie, kind="gaussian")


def test_information_groups_default_thresholds():
    iie = np.array([0.0, 1.99, 2.0, 3.0, 4.49, 4.5, 8.0], np.float32)
    out = np.asarray(info.information_groups(iie))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [0, 0, 1, 1, 1, 2, 2])
    assert [info.GROUP_NAMES[g] for g in out[[1, 2, 5]]] == ["low", "medium", "high"]


def test_information_groups_custom_thresholds():
    iie = np.array([[0.0, 0.99, 1.0], [2.99, 3.0, 7.0]], np.float32)
    out = np.asarray(info.information_groups(iie, (1.0, 3.0)))
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 2, 2]])
    np.testing.assert_array_equal(info.information_groups(iie, thresholds=(0.0, 100.0)), 1)


# ---------------------------------------------------------------------------------------------
# Bad inputs.

FP = info.disk(1)
GOOD = np.zeros((6, 6), np.uint8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int64, bool])
def test_entropy_rejects_non_uint8(dtype):
    image = np.zeros((6, 6), dtype)
    name = np.dtype(dtype).name
    with pytest.raises(ValueError, match=rf"image has dtype {name}; .*need uint8"):
        info.entropy_map(image, FP)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int64, bool])
def test_mi_rejects_non_uint8(dtype):
    bad = np.zeros((6, 6), dtype)
    name = np.dtype(dtype).name
    with pytest.raises(ValueError, match=rf"a has dtype {name}; .*need uint8"):
        info.mutual_information(bad, GOOD)
    with pytest.raises(ValueError, match=rf"b has dtype {name}; .*need uint8"):
        info.mutual_information(GOOD, bad)
    with pytest.raises(ValueError, match="need uint8"):
        info.count_vector_mutual_information(bad, GOOD)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_image_is_named(value):
    image = np.ones((6, 6), np.float32)
    image[2, 3] = value
    with pytest.raises(ValueError, match="image has dtype float32 and contains NaN or inf"):
        info.entropy_map(image, FP)
    with pytest.raises(ValueError, match="b has dtype float32 and contains NaN"):
        info.mutual_information(GOOD, image)


def test_uint8_check_also_under_jit():
    with pytest.raises(ValueError, match="need uint8"):
        jax.jit(lambda x: info.entropy_map(x, FP))(np.zeros((6, 6), np.float32))
    with pytest.raises(ValueError, match="need uint8"):
        jax.jit(info.mutual_information)(GOOD, np.zeros((6, 6), np.int32))


def test_wrong_ranks():
    with pytest.raises(ValueError, match=r"image of shape \(6,\) has fewer axes than the 2-D"):
        info.entropy_map(np.zeros(6, np.uint8), FP)
    with pytest.raises(ValueError, match=r"image of shape \(6, 6\) has fewer axes than the 3-D"):
        info.entropy_map(GOOD, info.ball(1))
    with pytest.raises(ValueError, match=r"footprint must be 2-D or 3-D, got shape \(3,\)"):
        info.entropy_map(GOOD, np.ones(3, bool))
    with pytest.raises(ValueError, match=r"footprint must be 2-D or 3-D, got shape \(3, 3, 3, 3\)"):
        info.entropy_map(GOOD, np.ones((3, 3, 3, 3), bool))
    with pytest.raises(ValueError, match=r"patches need 2 axes \(patch_ndim\)"):
        info.mutual_information(np.zeros(6, np.uint8), np.zeros(6, np.uint8))


def test_bad_footprints():
    with pytest.raises(ValueError, match="footprint has no True element"):
        info.entropy_map(GOOD, np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="footprint has no True element"):
        info.entropy_map(GOOD, np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"footprint must be boolean \(or 0/1 valued\)"):
        info.entropy_map(GOOD, np.full((3, 3), 2))
    with pytest.raises(ValueError, match=r"footprint must be boolean \(or 0/1 valued\)"):
        info.entropy_map(GOOD, np.array([[0.5, 1.0], [1.0, 1.0]]))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty_images(shape):
    empty = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError, match=re.escape(f"image of shape {shape} is empty")):
        info.entropy_map(empty, FP)
    with pytest.raises(ValueError, match=re.escape(f"patches of shape {shape} are empty")):
        info.mutual_information(empty, empty)


def test_mi_shape_mismatch():
    with pytest.raises(ValueError, match=r"same shape, got \(6, 6\) and \(6, 7\)"):
        info.mutual_information(GOOD, np.zeros((6, 7), np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        info.count_vector_mutual_information(GOOD[None], GOOD)


@pytest.mark.parametrize("kwargs", [dict(tile=0), dict(threads=0), dict(tile=2.5)])
def test_entropy_bad_tile_or_threads(kwargs):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be an integer >= 1"):
        info.entropy_map(GOOD, FP, **kwargs)
