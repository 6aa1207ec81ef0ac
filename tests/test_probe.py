"""The learning monitor's parts: the typical template, the probe images, the curves read back."""

import numpy as np

from piaug import analyze, probe


def test_typical_is_the_landmark_medoid():
    base = np.array([[10.0, 10.0], [30.0, 12.0]])
    shapes = np.stack([base, base + 1, base + 2, base + 40])  # the last is an outlier
    assert probe.typical(shapes) in (1, 2)
    assert probe.typical(shapes[[3, 0, 1]]) == 2  # base + 1: nearer the outlier than base


def test_the_probe_images_skip_the_template():
    ids = ["001", "002", "003", "004"]
    assert probe.choose(ids, "002", 2) == [0, 2]
    assert probe.choose(ids, "009", 10) == [0, 1, 2, 3]
    assert probe.choose(ids, "001", 0) == []


def test_curves_read_only_the_rows_that_hold_the_key(tmp_path):
    rows = [
        '{"step": 0, "probe_mre_mm": 9.5}',
        '{"step": 1, "loss": 3.0}',
        '{"step": 2, "loss": 2.5}',
        '{"step": 2, "probe_mre_mm": 8.0}',
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    assert analyze.read_curve(tmp_path / "metrics.jsonl") == ([1, 2], [3.0, 2.5])
    assert analyze.read_curve(tmp_path / "metrics.jsonl", "probe_mre_mm") == ([0, 2], [9.5, 8.0])
    assert analyze.read_curve(tmp_path / "metrics.jsonl", "nothing") is None
    assert analyze.read_curve(tmp_path / "absent.jsonl") is None
