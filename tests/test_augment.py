"""Jitter (torchvision ColorJitter semantics), crop placement and the anchor-exact rotation."""

import jax.numpy as jnp
import numpy as np
import pytest

from piaug import augment


def test_factor_range_follows_torchvision():
    assert augment.factor_range(0.15) == pytest.approx((0.85, 1.15))
    assert augment.factor_range(1.5) == (0.0, 2.5)  # lower bound clipped at 0
    assert augment.factor_range((0.5, 2.0)) == (0.5, 2.0)
    for bad in (-0.1, (1.2, 1.1), (-1, 1), "x", (1, float("inf"))):
        with pytest.raises(ValueError, match="brightness"):
            augment.factor_range(bad, "brightness")


def test_brightness_and_contrast_by_hand():
    x = np.array([[0.0, 0.2], [0.4, 1.0]], np.float32)  # mean 0.4
    np.testing.assert_allclose(augment.adjust_brightness(x, 1.5), [[0, 0.3], [0.6, 1.0]])
    # contrast 2: 2x - 0.4, clipped
    np.testing.assert_allclose(augment.adjust_contrast(x, 2.0), [[0, 0.0], [0.4, 1.0]], atol=1e-7)
    np.testing.assert_allclose(augment.adjust_contrast(x, 0.5), [[0.2, 0.3], [0.4, 0.7]], atol=1e-7)
    np.testing.assert_allclose(augment.adjust_contrast(x, 0.0), np.full((2, 2), 0.4), atol=1e-7)
    # The order of the two ops matters; both orders are the composition of the two.
    a = augment.color_jitter(x, 1.5, 0.5)
    b = augment.color_jitter(x, 1.5, 0.5, contrast_first=True)
    np.testing.assert_allclose(a, augment.adjust_contrast(augment.adjust_brightness(x, 1.5), 0.5))
    np.testing.assert_allclose(b, augment.adjust_brightness(augment.adjust_contrast(x, 0.5), 1.5))
    assert not np.allclose(a, b)


def test_jitter_works_on_jax_arrays_too():
    x = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    ours = augment.color_jitter(jnp.asarray(x), 1.3, 0.6, contrast_first=True)
    np.testing.assert_allclose(ours, augment.color_jitter(x, 1.3, 0.6, contrast_first=True), 1e-6)
    # batched: each image blends with its own mean
    one = augment.adjust_contrast(x[1], 0.6)
    np.testing.assert_allclose(augment.adjust_contrast(x, 0.6)[1], one, rtol=1e-6)


def test_group_jitter_from_an_estimate():
    groups = {
        "medium": {"brightness": [0.505, 1.997], "contrast": [0.34, 2.329]},
        "high": {"brightness": [0.5617, 1.612], "contrast": [0.416, 1.817]},
    }
    jitter = augment.GroupJitter.from_mapping(groups)
    np.testing.assert_allclose(jitter.brightness[0], [0.505, 1.997])  # low reuses medium
    np.testing.assert_allclose(jitter.contrast[2], [0.416, 1.817])
    assert augment.GroupJitter.from_mapping(jitter.to_mapping()).to_mapping() == jitter.to_mapping()
    rng = np.random.default_rng(0)
    draws = np.array([jitter.draw(rng, 2)[:2] for _ in range(2000)])
    assert draws[:, 0].min() >= 0.5617 and draws[:, 0].max() <= 1.612
    assert draws[:, 0].min() < 0.6 and draws[:, 0].max() > 1.57  # spans the range
    with pytest.raises(ValueError, match="unknown groups \\['huge'\\]"):
        augment.GroupJitter.from_mapping({**groups, "huge": groups["high"]})
    with pytest.raises(ValueError, match="medium group's ranges are required"):
        augment.GroupJitter.from_mapping({"high": groups["high"]})
    with pytest.raises(ValueError, match="high.contrast"):
        augment.GroupJitter.from_mapping({**groups, "high": {"brightness": 0.1, "contrast": -1}})


def test_crop_position_is_uniform_over_the_crops_that_contain_the_anchor():
    rng = np.random.default_rng(0)
    shape, size = (20, 30), 8
    for anchor in [(0, 0), (19, 29), (10, 3), (5, 15)]:
        pos = np.array([augment.crop_position(rng, anchor, size, shape) for _ in range(3000)])
        corner = np.asarray(anchor) - pos
        assert (pos >= 0).all() and (pos < size).all()
        assert (corner >= 0).all() and (corner + size <= np.asarray(shape)).all()
        for axis in range(2):  # every valid corner occurs, about equally often
            lo = max(0, anchor[axis] - size + 1)
            hi = min(anchor[axis], shape[axis] - size)
            counts = np.bincount(corner[:, axis] - lo, minlength=hi - lo + 1)
            assert len(counts) == hi - lo + 1 and counts.min() > 0
            assert counts.max() < 1.5 * counts.mean()


def test_crops_on_the_grid_share_the_images_cells():
    """crop_grid=32: every corner a multiple of 32, so the anchor's cell at strides 32..2 in the
    crop covers the same pixels as its cell in the image; every such corner occurs."""
    rng = np.random.default_rng(0)
    shape, size, grid = (192, 160), 64, 32
    for anchor in [(0, 0), (191, 159), (100, 37), (63, 64), (31, 130)]:
        pos = np.array(
            [augment.crop_position(rng, anchor, size, shape, grid=grid) for _ in range(400)]
        )
        corner = np.asarray(anchor) - pos
        assert (corner % grid == 0).all() and (pos >= 0).all() and (pos < size).all()
        assert (corner + size <= np.asarray(shape)).all()
        for stride in (32, 16, 8, 4, 2):
            cell = (np.asarray(anchor) // stride) * stride
            assert ((pos // stride) * stride + corner == cell).all()
        for axis in range(2):
            lo = max(0, anchor[axis] - size + 1)
            hi = min(anchor[axis], shape[axis] - size)
            valid = [c for c in range(lo, hi + 1) if c % grid == 0]
            assert sorted(set(corner[:, axis])) == valid
    # No grid corner keeps the anchor inside (a 40-pixel image, crop 24, grid 32): anywhere.
    pos = augment.crop_position(rng, (30, 30), 24, (40, 40), grid=32)
    assert ((np.asarray((30, 30)) - pos) >= 0).all() and (pos < 24).all()


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("angle", [0.0, 7.3, -20.0, 90.0])
def test_rotation_keeps_the_anchor_exactly(order, angle):
    image = np.random.default_rng(1).integers(0, 256, (50, 60)).astype(np.uint8)
    for anchor, crop_anchor in [((25, 30), (8, 8)), ((0, 59), (0, 15)), ((49, 0), (15, 0))]:
        crop = augment.rotated_crop(image, anchor, crop_anchor, 16, angle, order=order)
        assert crop.shape == (16, 16) and crop.dtype == np.float32
        assert crop[crop_anchor] == np.float32(image[anchor] / np.float32(255))


def test_rotation_geometry():
    image = np.random.default_rng(2).random((40, 40)).astype(np.float32)
    anchor, crop_anchor, n = (20, 20), (5, 5), 11
    plain = augment.rotated_crop(image, anchor, crop_anchor, n, 0.0)
    np.testing.assert_allclose(plain, image[15:26, 15:26], atol=1e-6)  # angle 0 is a plain crop
    # 90 degrees turns the content counter-clockwise on screen, about the anchor.
    turned = augment.rotated_crop(image, anchor, crop_anchor, n, 90.0)
    np.testing.assert_allclose(turned, np.rot90(image[15:26, 15:26]), atol=1e-5)
    # A bright spot 6 px right of the anchor ends 6 px above it after +90 degrees.
    spot = np.zeros((40, 40), np.float32)
    spot[20, 26] = 1.0
    out = augment.rotated_crop(spot, anchor, (8, 5), n, 90.0, order=1)
    assert np.unravel_index(out.argmax(), out.shape) == (2, 5)


def test_scaling_enlarges_about_the_anchor():
    rows, cols = np.indices((60, 60), dtype=np.float32)
    ramp = (rows + 100 * cols) / 6000  # linear: bilinear interpolation is exact on it
    anchor, crop_anchor = (30, 30), (4, 6)
    out = augment.rotated_crop(ramp, anchor, crop_anchor, 12, 0.0, order=1, scale=2.0)
    r, c = np.indices((12, 12))
    # crop pixel p shows image point anchor + (p - crop_anchor) / 2
    expected = ((30 + (r - 4) / 2) + 100 * (30 + (c - 6) / 2)) / 6000
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[crop_anchor] == pytest.approx(ramp[anchor], abs=1e-7)


def test_rotation_outside_the_image_is_zero():
    image = np.ones((30, 30), np.float32)
    crop = augment.rotated_crop(image, (0, 0), (10, 10), 20, 0.0)
    assert np.abs(crop[:10]).max() < 1e-6 and np.abs(crop[:, :10]).max() < 1e-6
    assert np.allclose(crop[10:, 10:], 1.0, atol=1e-6)
    assert crop.min() >= 0 and crop.max() <= 1  # cubic overshoot is clipped


def test_continuous_ranges_interpolate_between_group_centres():
    groups = {
        "low": {"brightness": (0.9, 1.1), "contrast": (0.8, 1.2), "iie_mean": 1.0},
        "medium": {"brightness": (0.5, 2.0), "contrast": (0.4, 2.4), "iie_mean": 3.0},
        "high": {"brightness": (0.7, 1.5), "contrast": (0.6, 1.8), "iie_mean": 5.0},
    }
    jitter = augment.GroupJitter.from_mapping(groups)
    np.testing.assert_allclose(jitter.centers, [1.0, 3.0, 5.0])
    b, c = jitter.ranges_at(2.0)  # half way between low and medium
    np.testing.assert_allclose(b, [0.7, 1.55])
    np.testing.assert_allclose(c, [0.6, 1.8])
    np.testing.assert_allclose(jitter.ranges_at(0.0)[0], [0.9, 1.1])  # constant beyond
    np.testing.assert_allclose(jitter.ranges_at(7.0)[1], [0.6, 1.8])
    rng = np.random.default_rng(0)
    draws = np.array([jitter.draw_at(rng, 4.0)[:2] for _ in range(2000)])
    assert draws[:, 0].min() >= 0.6 and draws[:, 0].max() <= 1.75
    assert draws[:, 0].min() < 0.62 and draws[:, 0].max() > 1.73
    # without every group's iie_mean (low reuses medium's ranges) there are no centres
    no_low = {k: v for k, v in groups.items() if k != "low"}
    assert augment.GroupJitter.from_mapping(no_low).centers is None
    with pytest.raises(ValueError, match="no group centers"):
        augment.GroupJitter.from_mapping(no_low).ranges_at(3.0)
    with pytest.raises(ValueError, match="increasing"):
        augment.GroupJitter([(1, 1)] * 3, [(1, 1)] * 3, centers=[3.0, 1.0, 5.0])


def test_degrade_blurs_and_noises_within_its_ranges():
    rng = np.random.default_rng(0)
    x = np.zeros((32, 32), np.float32)
    x[16, 16] = 1.0
    assert np.array_equal(augment.degrade(x, rng, blur=0.0, noise=0.0), x)  # off: unchanged
    blurred = augment.degrade(x, np.random.default_rng(1), blur=2.0, noise=0.0)
    assert blurred[16, 16] < 1.0 and blurred.sum() == pytest.approx(1.0, abs=1e-4)
    flat = np.full((64, 64), 0.5, np.float32)
    stds = [augment.degrade(flat, rng, blur=0.0, noise=0.1).std() for _ in range(200)]
    assert max(stds) <= 0.1 * 1.1 and min(stds) < 0.02 and max(stds) > 0.08
    out = augment.degrade(np.ones((8, 8), np.float32), rng, blur=1.0, noise=0.5)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
