"""The pipeline on volumes (docs/volumes.md): the template choice's salient points, the
estimate's key points and patches, the landmark files, the figures, the config checks, and
(slow tier) every stage of configs/test3d.py through the command line, then ``piaug.predict``
on NIfTI files from one annotated volume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, assert_drawn, load_config

from piaug import (
    analyze,
    configure,
    data,
    devices,
    estimate,
    plots,
    template_scores,
    volume_plots,
)
from piaug.data import landmarks, synthetic3d, volumes
from piaug.errors import UserError


def test_salient_points_of_a_volume():
    """Local maxima of a 3-D IIE map, strongest first, inside the border, far enough apart."""
    iie = np.zeros((12, 14, 16))
    peaks = [((6, 7, 8), 5.0), ((6, 7, 10), 4.0), ((3, 9, 5), 3.0), ((1, 1, 1), 9.0)]
    for p, v in peaks:
        iie[p] = v
    found = template_scores.salient_points(iie, count=8, min_distance=3, border=2)
    # (1, 1, 1) is in the border, (6, 7, 10) within 3 voxels of the stronger (6, 7, 8)
    np.testing.assert_array_equal(found, [(6, 7, 8), (3, 9, 5)])
    found = template_scores.salient_points(iie, count=1, min_distance=1, border=0)
    np.testing.assert_array_equal(found, [(1, 1, 1)])


def test_estimate_patches_and_key_points_of_volumes():
    rng = np.random.default_rng(0)
    vols = rng.integers(0, 256, (2, 10, 12, 14), dtype=np.uint8)
    points = np.array([[[5, 6, 7], [0, 0, 13]], [[9, 11, 0], [4, 4, 4]]])
    got = estimate.patches(vols, points, 4)
    assert got.shape == (2, 2, 4, 4, 4)
    np.testing.assert_array_equal(got[0, 0], vols[0, 3:7, 4:8, 5:9])
    np.testing.assert_array_equal(got[0, 1], vols[0, 0:4, 0:4, 10:14])  # shifted inside
    np.testing.assert_array_equal(got[1, 0], vols[1, 6:10, 8:12, 0:4])
    iie = rng.uniform(0, 6, (10, 12, 14))
    groups = estimate.key_points(iie, (2.0, 4.5), 5, margin=3, seed=1)
    for g, pts in enumerate(groups):
        assert pts.shape[1] == 3 and len(pts) == 5
        assert (pts >= 3).all() and (pts < np.array([7, 9, 11])).all()
        assert np.all(np.digitize(iie[tuple(pts.T)], (2.0, 4.5)) == g)


def test_landmark_files_of_volumes_round_trip(tmp_path):
    pred = np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3) / 7
    path = tmp_path / "predictions.csv"
    landmarks.write_csv(path, [({"model": "m", "image": f"v{i}"}, p) for i, p in enumerate(pred)])
    header = path.read_text().splitlines()[0].split(",")
    assert header[:5] == ["model", "image", "1_x", "1_y", "1_z"] and header[-1] == "4_z"
    (rows,) = landmarks.read_predictions(path).values()
    assert [r[0] for r in rows] == ["v0", "v1"]
    np.testing.assert_allclose(np.stack([r[1] for r in rows]), pred, atol=1e-3)


def test_nearest_cells_and_grid_anchors_of_volumes():
    m = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    points = np.array([[5.4, 0.2, 3.6], [-2.0, 9.0, 1.0]])  # (x, y, z)
    np.testing.assert_array_equal(
        m[analyze.nearest_cells(points, m.shape)], [m[3, 0, 5], m[1, 4, 0]]
    )
    anchors = analyze.grid_anchors((8, 8, 16), 4)
    assert anchors.shape == (2 * 2 * 4, 3)
    np.testing.assert_array_equal(anchors[:2], [(2, 2, 2), (2, 2, 6)])


def test_synthetic_volumes_keep_every_landmark_inside():
    """Subjects whose first draw would put a landmark at the field's edge are drawn again."""
    for index in range(24):
        p = synthetic3d.subject_params(0, index)
        unit = synthetic3d.forward(synthetic3d.TEMPLATE_LANDMARKS, p)
        assert (unit >= synthetic3d.MARGIN).all() and (unit <= 1 - synthetic3d.MARGIN).all()
    # subject 10 of seed 0 is one of those drawn again (its vertex left a 64^3 field)
    first = synthetic3d.forward(synthetic3d.TEMPLATE_LANDMARKS, synthetic3d.draw_params(0, 10))
    assert first.max() > 1 - synthetic3d.MARGIN


def test_volume_figures(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 256, (10, 12, 14), dtype=np.uint8)
    iie = rng.uniform(0, 6, vol.shape)
    groups = np.digitize(iie, (2.0, 4.5))
    points = np.array([[3.0, 4.0, 5.0], [10.0, 2.0, 8.0]])  # (x, y, z)
    plots.info_panel(
        vol, iie, groups, points, (2.0, 4.5), tmp_path / "info.png", spacing=(1.0, 1.0, 2.5)
    )
    plots.overlay(vol, points, points + 1, tmp_path / "overlay.png", spacing=(1.0, 1.0, 2.5))
    plots.landmarks(vol, points, tmp_path / "landmarks.png")
    for name in ("info", "overlay", "landmarks"):
        assert_drawn(tmp_path / f"{name}.png")
    # the views: axial (x, y) at z, coronal (x, z) at y, sagittal (y, z) at x
    np.testing.assert_array_equal(volume_plots.view(vol, (3, 4, 5), "axial"), vol[5])
    np.testing.assert_array_equal(volume_plots.view(vol, (3, 4, 5), "coronal"), vol[:, 4])
    np.testing.assert_array_equal(volume_plots.view(vol, (3, 4, 5), "sagittal"), vol[:, :, 3])
    assert volume_plots.aspect("coronal", (1.0, 1.0, 2.5)) == 2.5
    batch = {
        "image": vol[None],
        "crop": rng.uniform(0, 1, (1, 6, 6, 6)),
        "anchor": np.array([[2, 3, 4]]),
        "crop_anchor": np.array([[1, 2, 3]]),
        "angle": np.array([[1.0, 2.0, 3.0]]),
    }
    plots.training_batch(batch, tmp_path / "batch.png", count=1)
    assert_drawn(tmp_path / "batch.png")


def test_configs_of_volumes_are_checked():
    config = load_config("test3d")
    configure.check(config, configure.parse_stages(config.stages))
    assert configure.model(config).dims == 3
    config.stages = "info,pretrain,pseudo,detector"
    with pytest.raises(UserError, match="detector .* is 2-D only"):
        configure.check(config, configure.parse_stages(config.stages))
    config = load_config("test3d")
    config.data.image_size = (32, 32)
    with pytest.raises(UserError, match=r"image_size=\(32, 32\) has 2 entries .* 3-D volumes"):
        configure.check(config, configure.parse_stages(config.stages))
    config = load_config("test")
    config.data.image_size = (32, 32, 32)
    with pytest.raises(UserError, match="has 3 entries .* 2-D images"):
        configure.check(config, configure.parse_stages(config.stages))


def test_cpu_hours_of_volumes():
    """The CPU estimate of a volume config scales the measured 3-D step."""
    config = load_config("demo3d")  # the measured setting: one 64^3 crop of each 64^3 volume
    steps = 700
    hours = devices.cpu_hours(config, steps, platform="cpu")
    assert hours == pytest.approx(700 * 0.690 / 3600, rel=1e-6)  # the measured setting itself
    config.model.width, config.train.batch_size = 0.25, 4  # width squared, voxels: 8x
    assert devices.cpu_hours(config, steps, platform="cpu") == pytest.approx(8 * hours)
    config.data.image_size = (32, 32)  # an image config: the 2-D measurement scales it
    config.data.crop_size = 32
    assert devices.cpu_hours(config, steps, platform="cpu") < hours / 10


@pytest.mark.slow
def test_volume_pipeline_then_predict(tmp_path):
    """configs/test3d.py through the command line (the stages up to evaluate), then
    piaug.predict on NIfTI files: one annotated volume, landmarks in voxels and millimetres."""
    nib = pytest.importorskip("nibabel")
    run = tmp_path / "run"
    env = os.environ | {"PIAUG_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "piaug.main", "--config=configs/test3d.py", f"--workdir={run}"]
    # every stage but analyze (its 3-D pieces are tested above: figures, anchors, cells;
    # configs/demo3d.py runs it whole)
    cmd += ["--config.stages=info,pretrain,estimate,train,evaluate"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert {"template_copy", "baseline", "piaug"} <= set(results)
    assert all(np.isfinite(r["mre_mm"]) for r in results.values())
    groups = json.loads((run / "augment.json").read_text())["groups"]
    assert "medium" in groups and np.asarray(groups["medium"]["points"]).shape[1] == 3
    for name in ("info_synthetic3d-0-0000", "overlay_piaug_synthetic3d-1-0000"):
        assert_drawn(run / "figures" / f"{name}.png")
    with (run / "predictions.csv").open() as f:
        assert "1_z" in next(csv.reader(f))

    # three volumes as NIfTI files (1.5 x 1 x 2 mm voxels), the first annotated
    images = tmp_path / "new"
    images.mkdir()
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    affine[:3, 3] = (-30.0, 10.0, 5.0)
    truth = []
    for i in range(3):
        ex = synthetic3d.generate(i, seed=5, size=(36, 40, 44))
        nib.save(nib.Nifti1Image(ex["image"].transpose(2, 1, 0), affine), images / f"c{i}.nii.gz")
        truth.append(ex["landmarks"])
    template_csv = tmp_path / "template.csv"
    landmarks.write_csv(template_csv, [({"image": "c0.nii.gz"}, truth[0])])
    pred = tmp_path / "pred"
    cmd = [sys.executable, "-m", "piaug.predict", f"--run={run}", f"--images={images}"]
    cmd += [f"--out={pred}", f"--template={images / 'c0.nii.gz'}"]
    cmd += [f"--template-landmarks={template_csv}", "--model=piaug"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    voxels = {r["image"]: r for r in csv.DictReader((pred / "landmarks.csv").open())}
    world = {r["image"]: r for r in csv.DictReader((pred / "landmarks_world.csv").open())}
    assert sorted(voxels) == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
    cols = landmarks.columns(12, 3)
    for name in voxels:
        v = np.array([float(voxels[name][c]) for c in cols]).reshape(-1, 3)
        w = np.array([float(world[name][c]) for c in cols]).reshape(-1, 3)
        assert ((v >= -0.5) & (v <= np.array([44, 40, 36]) - 0.5)).all()  # inside (x, y, z)
        np.testing.assert_allclose(w, v * [1.5, 1.0, 2.0] + [-30.0, 10.0, 5.0], atol=0.02)
    assert_drawn(pred / "overlays" / "c1.png")
    # the detector is 2-D only: a clear message, not a missing-checkpoint error
    cmd = [sys.executable, "-m", "piaug.predict", f"--run={run}", f"--images={images}"]
    out = subprocess.run(
        [*cmd, f"--out={tmp_path / 'p2'}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 2 and "trained on volumes" in out.stderr, out.stderr[-2000:]


@pytest.mark.slow
def test_the_mni_afids_case(tmp_path):
    """data_prep/mni_afids.py: the MNI template deformed, the AFIDs mapped through the same
    map (the landmark's template position is where the subject's voxel is sampled from)."""
    pytest.importorskip("nilearn", reason="the MNI case needs nilearn (pip install -e '.[mni]')")
    pytest.importorskip("afids_utils", reason="the MNI case needs afids-utils ('.[mni]')")
    sys.path.insert(0, str(REPO / "data_prep"))
    try:
        import mni_afids
    finally:
        sys.path.pop(0)
    assert mni_afids.main([f"--out={tmp_path}", "--num=2"]) == 0
    ds = data.load("folder3d", tmp_path, window="percentile")
    assert len(ds) == 2 and ds.num_landmarks == 32
    ex = ds[1]
    assert ex["image"].ndim == 3 and np.allclose(ex["spacing"], 2.0)
    # the map back from the subject's landmarks lands on the template's AFIDs
    img = mni_afids.template(2)
    world, _ = mni_afids.afids_world()
    size = np.asarray(img.shape, np.float64)
    p = mni_afids.subject_params(0, 1, mni_afids.unit_points(img, world))
    back = synthetic3d.backward((ex["landmarks"] + 0.5) / size, p) * size - 0.5
    np.testing.assert_allclose(volumes.to_world(back, img.affine), world, atol=0.01)  # csv: 3 dp
    assert mni_afids.main([f"--out={tmp_path}", "--num=2"]) == 2  # nothing overwritten
