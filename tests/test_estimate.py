"""piaug.estimate against sklearn loops written the authors' way (grow, augment, measure)."""

import jax.numpy as jnp
import numpy as np
import pytest

from piaug import augment, estimate, info

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _patches(rng, m, size=16):
    """Textured uint8 patches with various spreads of gray values."""
    base = rng.integers(0, 256, (m, 1, 1))
    spread = rng.integers(1, 120, (m, 1, 1))
    noise = rng.normal(0, 1, (m, size, size))
    return np.clip(base + spread * noise, 0, 255).astype(np.uint8)


def _augmented(patch, b, c):
    """The authors' way: jitter the float patch (piaug.augment), round back to uint8."""
    x = patch.astype(np.float32) / 255.0
    y = augment.color_jitter(x, np.float32(b), np.float32(c))
    return np.round(y * 255.0).astype(np.uint8)


def test_self_information_is_sklearn_mi_of_the_augmented_patch():
    rng = np.random.default_rng(0)
    p = _patches(rng, 7)
    curves = estimate.self_information(p, 12)
    f = estimate.factors(12)
    hist = estimate._histograms(p.reshape(7, -1))
    for i in range(7):
        for d in range(2):
            for s in (0, 1, 5, 12):
                table = np.asarray(estimate.value_map(jnp.asarray(hist[i]), f[0, d, s], f[1, d, s]))
                want = sklearn_metrics.mutual_info_score(p[i].ravel(), table[p[i]].ravel())
                assert curves[i, d, s] == pytest.approx(want, abs=2e-5)


def test_value_map_is_the_pixelwise_jitter():
    rng = np.random.default_rng(1)
    p = _patches(rng, 5)
    hist = estimate._histograms(p.reshape(5, -1))
    same = total = 0
    for i in range(5):
        for b, c in ((1.0, 1.0), (0.61, 0.48), (1.3, 1.4), (2.2, 2.6)):
            table = np.asarray(estimate.value_map(jnp.asarray(hist[i]), b, c))
            want = _augmented(p[i], b, c)
            same += int(np.sum(table[p[i]] == want))
            total += want.size
            assert np.max(np.abs(table[p[i]].astype(int) - want)) <= 1  # rounding ties only
    assert same / total > 0.995


def test_count_vector_self_information_matches_sklearn_on_histograms():
    rng = np.random.default_rng(2)
    p = _patches(rng, 3)
    curves = estimate.self_information(p, 3, estimator="count_vector")
    f = estimate.factors(3)
    hist = estimate._histograms(p.reshape(3, -1))
    for i in range(3):
        for d, s in ((0, 2), (1, 3)):
            table = np.asarray(estimate.value_map(jnp.asarray(hist[i]), f[0, d, s], f[1, d, s]))
            h_aug = np.bincount(table[p[i]].ravel(), minlength=256)
            want = sklearn_metrics.mutual_info_score(hist[i], h_aug)
            assert curves[i, d, s] == pytest.approx(want, abs=2e-5)


def test_passing_steps_stop_at_the_first_failure_and_the_limit():
    curves = np.array([[[3.0, 2.5, 1.0, 2.9, 2.9], [3.0, 2.9, 2.8, 2.7, 2.6]]])
    assert estimate.passing_steps(curves, 2.0, (4, 4)).tolist() == [[1, 4]]
    assert estimate.passing_steps(curves, 2.0, (4, 2)).tolist() == [[1, 2]]
    assert estimate.passing_steps(curves, 5.0, (4, 4)).tolist() == [[0, 0]]


def test_factors_and_limits():
    f = estimate.factors(30)
    assert f[0, 1, 10] == pytest.approx(1.3) and f[1, 1, 10] == pytest.approx(1.4)
    assert f[0, 0, 10] == pytest.approx(0.7) and f[1, 0, 30] == 0.0
    assert estimate.step_limits(100) == (25, 100)  # contrast reaches 0 after 25 steps down


def test_key_points_lie_in_their_group_away_from_the_border():
    rng = np.random.default_rng(3)
    iie = rng.uniform(0, 7, (40, 50)).astype(np.float32)
    a = estimate.key_points(iie, (2.0, 4.5), 6, margin=8, seed=5)
    b = estimate.key_points(iie, (2.0, 4.5), 6, margin=8, seed=5)
    for g, (pa, pb) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_array_equal(pa, pb)
        assert len(pa) == 6 and len(np.unique(pa, axis=0)) == 6
        assert pa.min() >= 8 and np.all(pa < np.array([32, 42]))
        groups = np.asarray(info.information_groups(iie[pa[:, 0], pa[:, 1]], (2.0, 4.5)))
        assert np.all(groups == g)
    empty = estimate.key_points(np.zeros((40, 50), np.float32), (2.0, 4.5), 6, margin=8)
    assert [len(p) for p in empty] == [6, 0, 0]


def test_patches_are_centred_and_shifted_inside():
    image = np.arange(20 * 30).reshape(1, 20, 30)
    out = estimate.patches(image, np.array([[[10, 15], [0, 0], [19, 29]]]), 4)
    np.testing.assert_array_equal(out[0, 0], image[0, 8:12, 13:17])
    np.testing.assert_array_equal(out[0, 1], image[0, :4, :4])
    np.testing.assert_array_equal(out[0, 2], image[0, 16:, 26:])


def _position_features(n, size):
    """Encoder maps that encode position only: matching finds the same pixel in every image."""
    out = []
    for stride in (32, 16, 8, 4, 2):
        h, w = -(-size[0] // stride), -(-size[1] // stride)
        r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        f = np.stack([np.cos(r), np.sin(r), np.cos(c), np.sin(c), np.cos(r + c)], -1)
        f = np.concatenate([f, 0.1 * np.ones((h, w, 1))], -1)  # positive cosines
        out.append(np.broadcast_to(f, (n, h, w, f.shape[-1])).astype(np.float32))
    return out


def _reference(images, points, template, target_alpha, max_steps):
    """The authors' loop: sklearn MI per patch; grow both factors until MI < target."""
    groups = {}
    for g, pts in enumerate(points):
        if not len(pts):
            continue
        # the position features match a point to the top-left pixel of its stride-2 cell
        found = np.stack([pts if i == template else pts // 2 * 2 for i in range(len(images))])
        ps = estimate.patches(images, found, 16)
        mi = [
            sklearn_metrics.mutual_info_score(ps[template, j].ravel(), ps[i, j].ravel())
            for i in range(len(images))
            if i != template
            for j in range(len(pts))
        ]
        target = target_alpha * np.mean(mi)
        steps = []
        for patch in ps.reshape(-1, 16, 16):
            counts = []
            for sign, limit in ((-1, 25), (1, max_steps)):
                s = 0
                while s < limit:
                    b, c = (1 + sign * step * (s + 1) for step in estimate.STEP_SIZES)
                    aug = _augmented(patch, max(b, 0.0), max(c, 0.0))
                    if sklearn_metrics.mutual_info_score(patch.ravel(), aug.ravel()) < target:
                        break
                    s += 1
                counts.append(s)
            steps.append(counts)
        groups[info.GROUP_NAMES[g]] = (target, np.mean(steps, 0), len(steps))
    return groups


@pytest.mark.parametrize("alpha", [1.0, 1.6])
def test_estimate_equals_the_authors_loop(alpha):
    rng = np.random.default_rng(4)
    size = (64, 64)
    base = rng.integers(0, 256, size)
    yy, xx = np.mgrid[: size[0], : size[1]]
    images = np.stack(
        [np.clip(base * (xx / 64) + rng.normal(0, 20, size), 0, 255) for _ in range(4)]
    ).astype(np.uint8)
    iie = np.asarray(info.entropy_map(images[1], info.disk(2)))
    out = estimate.estimate(
        _position_features(4, size),
        images,
        iie,
        1,
        num_points=3,
        patch_size=16,
        alpha=alpha,
        max_steps=40,
    )
    points = estimate.key_points(iie, (2.0, 4.5), 3, margin=8)
    want = _reference(images, points, 1, alpha, 40)
    assert set(out["groups"]) == set(want)
    for name, (target, mean_steps, count) in want.items():
        got = out["groups"][name]
        assert got["target_mi"] == pytest.approx(target, rel=1e-5)
        tolerance = 1.0 / count + 1e-6  # a rounding tie may move one patch by one step
        assert got["mean_steps"]["down"] == pytest.approx(mean_steps[0], abs=tolerance)
        assert got["mean_steps"]["up"] == pytest.approx(mean_steps[1], abs=tolerance)
        lo, hi = got["brightness"]
        assert lo == pytest.approx(1 - 0.03 * got["mean_steps"]["down"], abs=1e-6)
        assert hi == pytest.approx(1 + 0.03 * got["mean_steps"]["up"], abs=1e-6)
        assert len(got["mi"]) == 3 * 3


def test_a_higher_alpha_gives_narrower_ranges():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (3, 64, 64)).astype(np.uint8)
    images[1:] = np.clip(images[0] + rng.normal(0, 30, (2, 64, 64)), 0, 255)
    iie = np.full((64, 64), 3.0, np.float32)  # every pixel is 'medium'
    feats = _position_features(3, (64, 64))
    wide, narrow = (
        estimate.estimate(feats, images, iie, 0, num_points=4, patch_size=16, alpha=a)
        for a in (0.5, 2.0)
    )
    assert list(wide["groups"]) == ["medium"]
    w, n = wide["groups"]["medium"], narrow["groups"]["medium"]
    assert w["brightness"][0] <= n["brightness"][0] and w["contrast"][1] >= n["contrast"][1]
    assert (w["mean_steps"]["up"] + w["mean_steps"]["down"]) > (
        n["mean_steps"]["up"] + n["mean_steps"]["down"]
    )


def test_bad_arguments_are_refused():
    images = np.zeros((2, 32, 32), np.uint8)
    feats = _position_features(2, (32, 32))
    iie = np.full((32, 32), 3.0, np.float32)
    with pytest.raises(ValueError, match="estimator"):
        estimate.estimate(feats, images, iie, 0, estimator="kde")
    with pytest.raises(ValueError, match="patch_size=64"):
        estimate.estimate(feats, images, iie, 0, patch_size=64)
    with pytest.raises(ValueError, match="at least one other image"):
        estimate.estimate([f[:1] for f in feats], images[:1], iie, 0, patch_size=8)
