"""Tests for the synthetic cephalogram-like dataset (piaug.data.synthetic)."""

import hashlib
import time

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from skimage.filters.rank import entropy
from skimage.morphology import disk

from piaug.data import synthetic

SIZE = (384, 384)


@pytest.fixture(scope="module")
def ex0() -> dict:
    return synthetic.generate(0, seed=0, size=SIZE, num_landmarks=synthetic.MAX_LANDMARKS)


def test_output_types_shapes_and_ranges(ex0: dict) -> None:
    ex = synthetic.generate(1)
    assert set(ex) == {"image", "landmarks", "spacing", "id"}
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == SIZE
    assert ex["landmarks"].dtype == np.float32 and ex["landmarks"].shape == (19, 2)
    assert ex["id"] == "synthetic-0-0001"
    assert ex["spacing"] == pytest.approx(193.5 / 384)
    assert ex0["landmarks"].shape == (synthetic.MAX_LANDMARKS, 2)
    assert synthetic.MAX_LANDMARKS == len(synthetic.LANDMARK_NAMES) >= 19
    img = ex0["image"]
    assert img.min() == 0 and img.max() > 230  # black surround, bright bone/label


def test_determinism_and_order_independence() -> None:
    a = synthetic.generate(3, seed=5, size=(96, 128))
    b = synthetic.generate(3, seed=5, size=(96, 128))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
    ds = synthetic.SyntheticDataset(6, seed=5, size=(96, 128))
    assert len(ds) == 6
    _ = ds[5], ds[0]
    c = ds[3]
    np.testing.assert_array_equal(c["image"], a["image"])
    np.testing.assert_array_equal(c["landmarks"], a["landmarks"])
    assert c["id"] == a["id"] == "synthetic-5-0003"
    for other in (
        synthetic.generate(3, seed=6, size=(96, 128)),
        synthetic.generate(4, seed=5, size=(96, 128)),
    ):
        assert not np.array_equal(other["image"], a["image"])
        assert np.abs(other["landmarks"] - a["landmarks"]).max() > 0.5


def test_golden_checksum() -> None:
    # Guards machine/library independence; update deliberately if the generator changes.
    ex = synthetic.generate(7, seed=3, size=(96, 128))
    digest = hashlib.sha256(ex["image"].tobytes()).hexdigest()[:16]
    assert digest == GOLDEN_IMAGE
    np.testing.assert_allclose(ex["landmarks"][:3], GOLDEN_LANDMARKS, atol=1e-3)


GOLDEN_IMAGE = "ee6c1eafe899fd0f"
GOLDEN_LANDMARKS = [[57.10077, 46.11542], [87.55305, 42.5505], [79.48432, 46.6088]]


def test_landmarks_inside_and_prefix() -> None:
    for i in range(60):
        for size in ((64, 64), (64, 160), (150, 64)):
            lm = synthetic.generate(i, seed=i % 3, size=size, num_landmarks=25)["landmarks"]
            assert np.all(lm >= 0) and np.all(lm[:, 0] <= size[1] - 1)
            assert np.all(lm[:, 1] <= size[0] - 1)
    full = synthetic.generate(2, num_landmarks=synthetic.MAX_LANDMARKS)["landmarks"]
    for n in (1, 5, 19):
        lm = synthetic.generate(2, num_landmarks=n)["landmarks"]
        assert lm.shape == (n, 2)
        np.testing.assert_array_equal(lm, full[:n])


def test_anatomy_independent_of_resolution() -> None:
    small = synthetic.generate(4, size=(192, 192))
    big = synthetic.generate(4, size=(384, 384))
    # Pixel centres: x_big + 0.5 == 2 * (x_small + 0.5).
    np.testing.assert_allclose(big["landmarks"] + 0.5, 2 * (small["landmarks"] + 0.5), atol=1e-3)
    assert big["spacing"] == pytest.approx(small["spacing"] / 2)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    return (
        img[y0, x0] * (1 - fx) * (1 - fy)
        + img[y0, x0 + 1] * fx * (1 - fy)
        + img[y0 + 1, x0] * (1 - fx) * fy
        + img[y0 + 1, x0 + 1] * fx * fy
    )


@pytest.mark.parametrize("index", [0, 5])
def test_warp_moves_landmarks_with_the_image(index: int) -> None:
    hw, s = SIZE, min(SIZE)
    ex = synthetic.generate(index, size=hw, num_landmarks=synthetic.MAX_LANDMARKS)
    p = synthetic._draw_params(0, index)
    lm = ex["landmarks"].astype(np.float64)
    # The image->template map (used to render every pixel) sends landmarks to template points.
    u, v = synthetic._backward(lm[:, 0], lm[:, 1], p, hw)
    err_px = np.abs(np.stack([u, v], 1) - synthetic._TEMPLATE_LANDMARKS) * s
    assert err_px.max() < 1e-3
    # The warped subject around each landmark equals the unwarped template image sampled through
    # the same transform; a 1.5 px mis-registration is clearly worse.
    warped, _ = synthetic._render(0, index, hw, grain=False, label=False)
    template, _ = synthetic._render(0, index, hw, warp=False, grain=False, label=False)
    r, errs, errs_shifted = 7, [], []
    for x, y in np.round(lm).astype(int):
        yy, xx = np.mgrid[y - r : y + r + 1, x - r : x + r + 1].astype(np.float64)
        patch = warped[y - r : y + r + 1, x - r : x + r + 1].ravel()
        for shift, acc in ((0.0, errs), (1.5, errs_shifted)):
            uu, vv = synthetic._backward(xx + shift, yy, p, hw)
            q = synthetic._forward(np.stack([uu.ravel(), vv.ravel()], 1), None, hw)
            acc.append(np.abs(patch - _bilinear(template, q[:, 0], q[:, 1])).mean())
    errs, errs_shifted = np.array(errs), np.array(errs_shifted)
    assert errs.max() < 8.0, errs  # residual = bilinear interpolation error at sharp edges
    assert errs.mean() < 0.35 * errs_shifted.mean(), (errs, errs_shifted)


def _window_range(img: np.ndarray, k: int) -> np.ndarray:
    """max - min of img over every k x k window (valid part)."""
    w = sliding_window_view(img, k, axis=1)
    hi, lo = w.max(-1), w.min(-1)
    return sliding_window_view(hi, k, axis=0).max(-1).astype(int) - sliding_window_view(
        lo, k, axis=0
    ).min(-1)


def test_flat_region_bright_structures_and_label(ex0: dict) -> None:
    img = ex0["image"]
    h, w = img.shape
    assert (_window_range(img, 21) == 0).mean() > 0.02  # truly constant 21 x 21 neighbourhoods
    exposed = img[h // 8 :, :]
    assert (exposed >= 170).mean() > 0.03  # bright bone-like structures
    assert ((exposed > 40) & (exposed < 120)).mean() > 0.3  # soft-tissue greys
    corner = img[: h // 8, -w // 3 :]  # burned-in label: bright rectangle with dark glyphs
    bright = corner >= 230
    assert bright.sum() > 300
    rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    box = corner[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    assert (box >= 230).mean() > 0.5 and (box < 60).mean() > 0.1


def test_information_entropy_groups_and_landmarks(ex0: dict) -> None:
    for ex in (ex0, synthetic.generate(6, num_landmarks=synthetic.MAX_LANDMARKS)):
        ent = entropy(ex["image"], disk(10))  # bits
        low, high = (ent < 2).mean(), (ent >= 4.5).mean()
        assert low >= 0.1 and 1 - low - high >= 0.1 and high >= 0.1, (low, high)
        lm = np.round(ex["landmarks"]).astype(int)
        at = ent[lm[:, 1], lm[:, 0]]
        assert (at > 3.7).mean() >= 0.9 and np.median(at) > 4.5, at


def test_generation_time() -> None:
    synthetic.generate(0)
    best = min(_timed(lambda: synthetic.generate(1)) for _ in range(2))
    assert best < 1.5  # typically ~0.07 s; generous for shared CI machines


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"index": -1}, "index"),
        ({"index": 0, "size": (63, 384)}, "size"),
        ({"index": 0, "size": (384,)}, "size"),
        ({"index": 0, "num_landmarks": 0}, "num_landmarks"),
        ({"index": 0, "num_landmarks": 26}, "25"),
        ({"index": 0, "seed": -1}, "seed"),
        ({"index": 1.5}, "index"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, word: str) -> None:
    index = kwargs.pop("index")
    with pytest.raises(ValueError, match=word):
        synthetic.generate(index, **kwargs)


def test_dataset_bad_arguments_and_indexing() -> None:
    for n in (0, -3):
        with pytest.raises(ValueError, match="num_images"):
            synthetic.SyntheticDataset(n)
    with pytest.raises(ValueError, match="size"):
        synthetic.SyntheticDataset(2, size=(32, 32))
    with pytest.raises(ValueError, match="num_landmarks"):
        synthetic.SyntheticDataset(2, num_landmarks=100)
    ds = synthetic.SyntheticDataset(2, size=(64, 64))
    for i in (-3, 2, 10):
        with pytest.raises(IndexError):
            ds[i]
    assert ds[-1]["id"] == "synthetic-0-0001"  # a Sequence: negative indices count from the end
    assert ds[np.int64(1)]["id"] == "synthetic-0-0001"
