"""MRE/SDR in millimetres under both protocols, against hand-computed values."""

import numpy as np
import pytest

from piaug import evaluate


def test_ceph_grid_spacing_is_the_papers():
    # ISBI 2015: 1935 x 2400 pixels (W x H) at 0.1 mm, trained at 384 x 384
    mm = evaluate.grid_spacing([0.1], [(2400, 1935)], (384, 384))
    np.testing.assert_allclose(mm, [[1935 / 3840, 2400 / 3840]])  # 0.504 in x, 0.625 in y
    assert mm[0, 1] == pytest.approx(0.625)


def test_radial_errors_scale_each_axis():
    pred = np.array([[[3.0, 4.0], [0.0, 0.0]]])
    true = np.zeros((1, 2, 2))
    np.testing.assert_allclose(evaluate.radial_errors(pred, true, 1.0), [[5.0, 0.0]])
    np.testing.assert_allclose(
        evaluate.radial_errors(pred, true, [[2.0, 0.5]]), [[np.hypot(6, 2), 0]]
    )
    with pytest.raises(ValueError, match=r"\(N, L, 2\)"):
        evaluate.radial_errors(pred[0], true[0], 1.0)


def test_metrics_mre_sdr_strictly_below_and_worst():
    errors = np.array([[1.0, 2.0, 5.0], [3.0, 2.5, 1.0]])
    m = evaluate.metrics(errors)
    assert m["mre_mm"] == pytest.approx(errors.mean())
    assert m["per_landmark_mre_mm"] == [2.0, 2.25, 3.0]
    # strictly below: 2.0 is not a success at 2 mm, 2.5 not at 2.5 mm
    assert m["sdr"] == {
        "2.0": pytest.approx(200 / 6),
        "2.5": 50.0,
        "3.0": pytest.approx(400 / 6),
        "4.0": pytest.approx(500 / 6),
    }
    assert m["n_images"] == 2 and m["worst"][0] == {"image": 0, "landmark": 2, "error_mm": 5.0}
    named = evaluate.metrics(errors, ids=["case7", "case9"])["worst"]
    assert named[:2] == [
        {"image": "case7", "landmark": 2, "error_mm": 5.0},
        {"image": "case9", "landmark": 0, "error_mm": 3.0},
    ]
    with pytest.raises(ValueError, match="NaN"):
        evaluate.metrics(np.array([[np.nan]]))


def test_both_protocols_from_grid_predictions():
    original_size = [(200, 100)]  # height, width
    truth = np.array([[[50.7, 99.9]]])  # x, y in original pixels
    # grid 100 x 50: the authors' truth is int(int(x) * 50 / 100), int(int(y) * 100 / 200)
    np.testing.assert_array_equal(
        evaluate.truth_in_grid(truth, original_size, (100, 50)), [[[25, 49]]]
    )
    pred = np.array([[[26.0, 49.0]]])  # one grid pixel right in x: 2 original px = 0.2 mm
    out = evaluate.evaluate(
        pred,
        landmarks_original=truth,
        spacing=[0.1],
        original_size=original_size,
        image_size=(100, 50),
    )
    assert out["grid"]["mre_mm"] == pytest.approx(0.2)
    # full resolution: (26 + 0.5) * 2 - 0.5 = 52.5, (49 + 0.5) * 2 - 0.5 = 98.5
    assert out["full"]["mre_mm"] == pytest.approx(0.1 * np.hypot(52.5 - 50.7, 98.5 - 99.9))
    assert out["grid"]["protocol"] == "grid 100x50" and out["full"]["protocol"] == "full resolution"
    text = evaluate.table({"baseline": out})
    assert "baseline" in text and "grid" in text and "<2.0" in text


def test_to_original_inverts_the_resize_of_points():
    from piaug.data import prepare

    pts = np.array([[[10.0, 20.0], [0.0, 199.0]]])
    grid = prepare.resize_points(pts[0], (200, 100), (64, 48))
    back = evaluate.to_original(grid[None], [(200, 100)], (64, 48))
    np.testing.assert_allclose(back, pts, atol=1e-4)  # resize_points gives float32


def test_both_protocols_for_volumes_with_anisotropic_voxels():
    """Volumes: (x, y, z) points, (D, H, W) sizes, a spacing per axis (x, y, z)."""
    original_size = [(40, 100, 200)]  # D, H, W
    spacing = [(0.5, 0.8, 2.5)]  # mm along x, y, z
    grid = (20, 50, 100)  # half of each axis
    mm = evaluate.grid_spacing(spacing, original_size, grid)
    np.testing.assert_allclose(mm, [[1.0, 1.6, 5.0]])
    truth = np.array([[[101.0, 51.0, 21.0]]])  # x, y, z voxels
    np.testing.assert_array_equal(
        evaluate.truth_in_grid(truth, original_size, grid), [[[50, 25, 10]]]
    )
    pred = np.array([[[51.0, 25.0, 11.0]]])  # one grid voxel off in x and in z
    out = evaluate.evaluate(
        pred,
        landmarks_original=truth,
        spacing=spacing,
        original_size=original_size,
        image_size=grid,
    )
    assert out["grid"]["mre_mm"] == pytest.approx(np.hypot(1.0, 5.0))
    # full resolution: (51 + 0.5) * 2 - 0.5 = 102.5, 50.5, 22.5
    full = np.sqrt((1.5 * 0.5) ** 2 + (0.5 * 0.8) ** 2 + (1.5 * 2.5) ** 2)
    assert out["full"]["mre_mm"] == pytest.approx(full)
    assert out["grid"]["protocol"] == "grid 20x50x100"
