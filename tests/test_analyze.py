"""The analysis helpers (piaug.analyze); the figures themselves: tests/test_train.py."""

import numpy as np

from piaug import analyze


def test_grid_anchors_and_centred_crops_keep_the_anchor():
    anchors = analyze.grid_anchors((20, 30), 8)
    assert anchors.tolist()[:4] == [[4, 4], [4, 12], [4, 20], [4, 28]] and len(anchors) == 8
    image = np.arange(20 * 30, dtype=np.float64).reshape(20, 30) % 256
    crops, where = analyze.centred_crops(image.astype(np.uint8), anchors, 10)
    assert crops.shape == (8, 10, 10) and crops.dtype == np.float32
    for crop, a, w in zip(crops, anchors, where, strict=True):
        assert crop[w[0], w[1]] == np.float32(image[a[0], a[1]] / 255.0)
    assert where[0].tolist() == [4, 4] and where[5].tolist() == [5, 5]  # clipped / centred


def test_binned_means_and_counts():
    x = np.array([0.1, 0.2, 3.0, 7.9, 8.0])
    y = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    mean, count = analyze.binned(x, y, np.array([0.0, 1.0, 4.0, 8.0]))
    np.testing.assert_allclose(mean, [2.0, 5.0, 8.0])  # 8.0 falls in the last bin
    assert count.tolist() == [2, 1, 2]
    mean, _ = analyze.binned(np.array([0.5]), np.array([1.0]), np.array([0.0, 1.0, 2.0]))
    assert np.isnan(mean[1])


def test_sampling_weights_of_fig_3():
    w = analyze.sampling_weights(np.array([1.0, 4.0]), (0.0, 0.5), 2.0)
    assert list(w) == ["uniform (gamma 0)", "IIE^0.5", "1[IIE >= 2]"]
    np.testing.assert_allclose(w["IIE^0.5"], [1.0, 2.0])
    np.testing.assert_allclose(w["1[IIE >= 2]"], [0.0, 1.0])
