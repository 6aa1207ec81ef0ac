"""Reading volumes (piaug.data.volumes) and the folder3d dataset: NIfTI files and DICOM series,
voxel and world coordinates, anisotropic spacing, windows, landmarks from label masks, the
resampling to a training grid, and every bad input named."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_dicom

from piaug import data
from piaug.data import prepare, volumes
from piaug.data.images import Window
from piaug.errors import UserError

nib = pytest.importorskip("nibabel")

# voxel sizes (mm) along i, j, k and an affine with a rotation, a flip and an offset
SPACING = (0.8, 1.0, 2.5)


def _affine(spacing=SPACING) -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, -1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing)
    affine[:3, 3] = (-40.0, 12.5, 30.0)
    return affine


def _values(size=(20, 16, 12), seed=0) -> np.ndarray:
    """HU-like values on an (i, j, k) grid: a gradient along i plus noise."""
    rng = np.random.default_rng(seed)
    i = np.arange(size[0])[:, None, None]
    return (-1000 + 100 * i + rng.normal(0, 5, size)).astype(np.int16)


def _nifti(path, values, affine=None, **header):
    img = nib.Nifti1Image(values, _affine() if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _series(folder, values_ijk, spacing=(0.7, 0.9, 3.0), shuffle=True, **extra):
    """A DICOM series of ``values_ijk`` ((i, j, k): columns, rows, slices), axial, slices
    3 mm apart along +z, written in a shuffled order (the reader sorts by position)."""
    order = np.random.default_rng(1).permutation(values_ijk.shape[2])
    for n, k in enumerate(order if shuffle else range(values_ijk.shape[2])):
        header = {
            "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.1",
            "PixelSpacing": [spacing[1], spacing[0]],  # row spacing, column spacing
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            "ImagePositionPatient": [-10.0, 20.0, 5.0 + spacing[2] * k],
            "RescaleSlope": 1,
            "RescaleIntercept": -1024,
        }
        values = (values_ijk[:, :, k].T + 1024).astype(np.uint16)  # (rows, columns)
        write_dicom(folder / f"slice{n:03d}.dcm", values, **{**header, **extra})
    return folder


def _csv(root, rows, header=None, k=2):
    header = header or ",".join(["image", *(f"{i}_{a}" for i in range(1, k + 1) for a in "xyz")])
    (root / "landmarks.csv").write_text("\n".join([header, *rows]) + "\n")


def test_nifti_axes_spacing_window_and_world_coordinates(tmp_path) -> None:
    values = _values()
    path = _nifti(tmp_path / "images" / "a.nii.gz", values)
    header = volumes.read_header(path)
    assert header.size == (20, 16, 12) and header.shape == (12, 16, 20)
    np.testing.assert_allclose(header.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(header.affine, _affine(), atol=1e-5)
    raw, _, own = volumes.read_values(path)
    np.testing.assert_array_equal(raw, values.transpose(2, 1, 0))  # (k, j, i)
    assert own is None
    ct = volumes.read_volume(path, Window("fixed", limits=(-200, 400)))
    assert ct.dtype == np.uint8 and ct.shape == (12, 16, 20)
    x = np.arange(20)
    expected = np.clip((-1000 + 100 * x + 200) * 255 / 600, 0, 255)  # gradient along x = i
    assert np.abs(ct.mean(axis=(0, 1)) - expected).max() < 3
    points = np.array([[3.0, 4.0, 5.0], [0.5, 15.0, 11.0]])
    world = volumes.to_world(points, header.affine)
    np.testing.assert_allclose(world[0], _affine()[:3, :3] @ points[0] + _affine()[:3, 3])
    np.testing.assert_allclose(volumes.to_voxels(world, header.affine), points, atol=1e-6)
    # the file's own window (cal_min / cal_max) is what auto takes
    own_path = _nifti(tmp_path / "b.nii", values, cal_min=-1000.0, cal_max=900.0)
    assert volumes.read_values(own_path)[2] == (-1000.0, 900.0)
    np.testing.assert_array_equal(
        volumes.read_volume(own_path),
        volumes.read_volume(own_path, Window("fixed", limits=(-1000, 900))),
    )


def test_dicom_series_sorted_by_position_with_its_affine(tmp_path) -> None:
    values = _values(size=(10, 8, 6))
    folder = _series(tmp_path / "s1", values)
    header = volumes.read_header(folder)
    assert header.size == (10, 8, 6)
    np.testing.assert_allclose(header.spacing, (0.7, 0.9, 3.0))
    expected = np.diag([0.7, 0.9, 3.0, 1.0])
    expected[:3, 3] = (-10.0, 20.0, 5.0)
    np.testing.assert_allclose(header.affine, expected)
    raw, _, _ = volumes.read_values(folder)
    np.testing.assert_allclose(raw, values.transpose(2, 1, 0))  # sorted, HU restored


def test_dicom_series_errors_name_the_folder(tmp_path) -> None:
    def broken(name, edit):
        folder = _series(tmp_path / name, _values(size=(10, 8, 6)))
        edit(folder)
        return folder

    def add(folder, values, **header):
        _series(tmp_path / "other", values, shuffle=False, **header)
        (tmp_path / "other" / "slice000.dcm").rename(folder / "added.dcm")

    cases = [
        (broken("gap", lambda f: (f / "slice002.dcm").unlink()), "unevenly spaced"),
        (broken("two", lambda f: add(f, _values((10, 8, 1)), SeriesInstanceUID="9.9")), "2 DICOM"),
        (broken("size", lambda f: add(f, _values((12, 8, 1)))), "differ in size"),
        (broken("same", lambda f: add(f, _values((10, 8, 1)))), "the same position"),
    ]
    for folder, message in cases:
        with pytest.raises(UserError, match=message) as e:
            volumes.read_header(folder)
        assert str(folder) in str(e.value)


def test_resampling_to_a_training_grid_keeps_the_mapping_back() -> None:
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 255, (12, 16, 20))
    out = prepare.resize_bilinear(vol, (6, 8, 10))
    assert out.shape == (6, 8, 10)
    # a 2 x 2 x 2 average at half-voxel centres: each output voxel is the mean of eight
    np.testing.assert_allclose(out[1, 2, 3], vol[2:4, 4:6, 6:8].mean(), rtol=1e-5)
    points = np.array([[3.5, 1.5, 0.5], [19.0, 15.0, 11.0]])  # (x, y, z)
    small = prepare.resize_points(points, (12, 16, 20), (6, 8, 10))
    np.testing.assert_allclose(small[0], [1.5, 0.5, 0.0])
    back = prepare.resize_points(small, (6, 8, 10), (12, 16, 20))
    np.testing.assert_allclose(back, points, atol=1e-5)
    # 2-D unchanged: (x, y) of an (H, W) grid
    np.testing.assert_allclose(prepare.resize_points([[1.5, 0.5]], (4, 8), (2, 4)), [[0.5, 0.0]])


def test_folder3d_voxel_and_world_coordinates_nifti_and_dicom(tmp_path) -> None:
    _nifti(tmp_path / "images" / "case1.nii.gz", _values())
    _nifti(tmp_path / "images" / "case2.nii", _values(seed=1))
    _series(tmp_path / "images" / "case3", _values(size=(10, 8, 6)))
    _csv(
        tmp_path,
        ["case1.nii.gz,1,2,3,19,15,11", "case2,0,0,0,4.5,6.5,2.25", "case3,9,7,5,0,1,2"],
    )
    ds = data.load("folder3d", tmp_path, window="fixed", limits=(-200, 400))
    assert ds.ids == ["case1", "case2", "case3"] and ds.dims == 3 and ds.num_landmarks == 2
    first = ds[0]
    assert first["image"].shape == (12, 16, 20) and first["image"].dtype == np.uint8
    np.testing.assert_allclose(first["landmarks"], [[1, 2, 3], [19, 15, 11]])
    np.testing.assert_allclose(first["spacing"], SPACING, rtol=1e-6)
    np.testing.assert_allclose(ds.annotation(2)["spacing"], (0.7, 0.9, 3.0))
    assert ds[2]["image"].shape == (6, 8, 10)
    assert ds.options["limits"] == (-200.0, 400.0)

    # world millimetres through each file's affine
    world = volumes.to_world(np.array([[1.0, 2, 3], [19, 15, 11]]), _affine())
    rows = [f"case1,{','.join(f'{v:.6f}' for v in world.ravel())}", "case2,,,,,,"]
    _csv(tmp_path, rows)
    ds = data.load("folder3d", tmp_path, coordinates="world")
    np.testing.assert_allclose(ds.annotation(0)["landmarks"], [[1, 2, 3], [19, 15, 11]], atol=1e-4)
    assert np.isnan(ds.annotation(1)["landmarks"]).all()  # a blank row: unlabelled
    assert np.isnan(ds.annotation(2)["landmarks"]).all()  # no row: unlabelled
    assert any("1 volumes have no landmarks" in line for line in ds.report)


def test_folder3d_landmarks_from_masks(tmp_path) -> None:
    size = (20, 16, 12)
    _nifti(tmp_path / "images" / "a.nii.gz", _values(size))
    _nifti(tmp_path / "images" / "b.nii.gz", _values(size, seed=2))
    mask = np.zeros(size, np.uint8)
    mask[2:5, 3:6, 4:7] = 1  # a box: centroid (3, 4, 5)
    mask[10:12, 8:9, 1:2] = 3
    _nifti(tmp_path / "masks" / "a.nii.gz", mask)
    ds = data.load("folder3d", tmp_path, landmarks_from="mask")
    np.testing.assert_allclose(ds.annotation(0)["landmarks"], [[3, 4, 5], [10.5, 8, 1]])
    assert np.isnan(ds.annotation(1)["landmarks"]).all()  # b has no mask: unlabelled
    ext = data.load(
        "folder3d", tmp_path, landmarks_from="mask", mask_points="extremes", labels=(1,)
    )
    np.testing.assert_allclose(
        ext.annotation(0)["landmarks"],
        [[2, 4, 5], [4, 4, 5], [3, 3, 5], [3, 5, 5], [3, 4, 4], [3, 4, 6]],
    )
    with pytest.raises(UserError, match="no voxel of label 2"):
        data.load("folder3d", tmp_path, landmarks_from="mask", labels=(1, 2))
    _nifti(tmp_path / "masks" / "b.nii.gz", mask[:10])
    with pytest.raises(UserError, match=r"masks/b.nii.gz .* is not on the grid"):
        data.load("folder3d", tmp_path, landmarks_from="mask")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda r: _nifti(r / "images" / "flat.nii.gz", np.zeros((8, 8), np.int16)), "2-D"),
        (
            lambda r: _nifti(r / "images" / "time.nii.gz", np.zeros((8, 8, 4, 3), np.int16)),
            "a series of volumes",
        ),
        (lambda r: (r / "images" / "x.png").write_bytes(b"\x89PNG"), "2-D image files"),
        (lambda r: _csv(r, ["case1,1,2,3,20,2,3"]), r"landmark 2 at \(x, y, z\) = \(20, 2, 3\)"),
        (lambda r: _csv(r, ["case9,1,2,3,4,5,6"]), "name volumes that are not in"),
        (lambda r: _csv(r, ["case1,1,2,3,4"], "image,1_x,1_y,2_x,2_y"), "missing 1_z"),
        (lambda r: (r / "images" / "bad.nii.gz").write_bytes(b"not nifti"), "bad.nii.gz"),
    ],
)
def test_folder3d_bad_input_names_the_file(tmp_path, setup, message) -> None:
    _nifti(tmp_path / "images" / "case1.nii.gz", _values())
    _csv(tmp_path, ["case1,1,2,3,4,5,6"])
    setup(tmp_path)
    with pytest.raises(UserError, match=message):
        data.load("folder3d", tmp_path)


def test_two_d_readers_refuse_three_d_landmarks(tmp_path) -> None:
    from piaug.data.common import LandmarkTable

    path = tmp_path / "landmarks.csv"
    path.write_text("image,1_x,1_y,1_z\na.png,1,2,3\n")
    with pytest.raises(UserError, match="a 3-D landmark file .* folder3d"):
        LandmarkTable(path)
    table = LandmarkTable(path, axes="xyz")
    np.testing.assert_allclose(table.rows[0][2], [[1, 2, 3]])


def test_window_fixed_needs_limits() -> None:
    with pytest.raises(UserError, match="window=fixed needs limits"):
        Window("fixed")
    assert Window("fixed", limits=(-200, 400)).bounds(np.zeros(3)) == (-200.0, 400.0)


def test_synthetic3d_volumes_are_seeded_and_their_landmarks_on_the_anatomy() -> None:
    from piaug.data import synthetic3d

    ds = data.load("synthetic3d", num_images=2, size=(32, 40, 48), seed=3)
    assert ds.dims == 3 and len(ds) == 2 and ds.ids[0] == "synthetic3d-3-0000"
    first = ds[0]
    assert first["image"].shape == (32, 40, 48) and first["image"].dtype == np.uint8
    np.testing.assert_allclose(first["spacing"], [240 / 48, 240 / 40, 240 / 32])  # x, y, z
    np.testing.assert_array_equal(first["image"], ds[0]["image"])  # deterministic
    test = data.load("synthetic3d", "", split="test", num_images=1, size=(32, 40, 48), seed=3)
    assert not np.array_equal(test[0]["image"], first["image"])  # another stream
    points = first["landmarks"]
    assert points.shape == (synthetic3d.MAX_LANDMARKS, 3)
    assert (points >= 0).all() and (points <= np.array([47, 39, 31])).all()
    # the same anatomical point in every subject: the template point maps back exactly
    hu, p = synthetic3d.render(3, 1, (32, 40, 48))
    unit = synthetic3d.forward(synthetic3d.TEMPLATE_LANDMARKS, p)
    np.testing.assert_allclose(
        synthetic3d.backward(unit, p), synthetic3d.TEMPLATE_LANDMARKS, atol=1e-9
    )
    # anatomy at the landmarks (noise-free template): air in the airway, bone at the chin
    names = list(synthetic3d.LANDMARK_NAMES)
    template = synthetic3d.template_hu(synthetic3d.TEMPLATE_LANDMARKS, p)
    assert template[names.index("airway at the chin")] == -900
    assert template[names.index("menton (chin)")] >= 600
    assert -60 < template[names.index("right parotid")] < -20
    # ... and in the rendered volume, at the mapped point's nearest voxel
    x, y, z = np.rint(ds[1]["landmarks"][names.index("airway at the chin")]).astype(int)
    assert ds[1]["image"][z, y, x] == 0  # air, below the window's -200 HU
    with pytest.raises(UserError, match="size"):
        data.load("synthetic3d", size=(8, 64, 64))


def test_one_shot_matching_of_volumes_end_to_end() -> None:
    """One-shot matching (``matching.predict``) on volumes: with maps that tell every cell
    apart, a volume matched against itself gives each landmark back in its own finest cell
    (2 voxels), as (x, y, z)."""
    from piaug import matching, models

    volume = data.load("synthetic3d", num_images=1, size=(32, 32, 32))[0]
    cells = matching.template_cells(volume["landmarks"], (32, 32, 32))  # (slice, row, col)
    rng = np.random.default_rng(0)
    fixed = [rng.normal(size=(*(32 // s,) * 3, 8)).astype(np.float32) for s in models.STRIDES]

    def distinct(images):  # the same maps for any volume: every cell its own vector
        return [np.broadcast_to(f, (len(images), *f.shape)) for f in fixed]

    found = matching.predict(
        distinct, volume["image"], cells, volume["image"][None], size=(32,) * 3
    )
    assert found.shape == (1, len(cells), 3)  # (x, y, z)
    np.testing.assert_array_equal(found[0][:, ::-1], cells // 2 * 2)


def test_volume_crops_track_the_anchor_and_rotate_like_the_images() -> None:
    from piaug import augment
    from piaug.data import transforms

    rng = np.random.default_rng(0)
    volume = rng.uniform(0, 1, (12, 14, 16)).astype(np.float32)
    anchor, crop_anchor = np.array([6, 7, 9]), np.array([3, 2, 4])
    plain = augment.rotated_crop(volume, anchor, crop_anchor, 8, (0.0, 0.0, 0.0), order=1)
    np.testing.assert_array_equal(plain, volume[3:11, 5:13, 5:13])  # no rotation: a cut
    turned = augment.rotated_crop(volume, anchor, crop_anchor, 8, (12.0, -7.0, 5.0), order=1)
    assert turned[tuple(crop_anchor)] == pytest.approx(volume[tuple(anchor)], abs=1e-6)
    r = augment.rotation_matrix((12.0, -7.0, 5.0))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    # a rotation in the (row, col) plane turns every slice as the 2-D crop does
    stack = np.repeat(volume[6][None], 12, axis=0)
    flat = augment.rotated_crop(volume[6], anchor[1:], crop_anchor[1:], 8, 12.0, order=1)
    deep = augment.rotated_crop(stack, anchor, crop_anchor, 8, (12.0, 0.0, 0.0), order=1)
    np.testing.assert_allclose(deep[3], flat, atol=1e-6)

    # the encoders' crop transform on a volume: cubic crops, (slice, row, col) anchors, 3 angles
    iie = rng.uniform(0, 5, volume.shape)
    crop = transforms.AnchorCrop(
        crop_size=8,
        order=1,
        jitter=augment.GroupJitter.uniform((1.0, 1.0), (1.0, 1.0)),
        anchors_per_crop=4,
        crops_per_image=2,
    )
    out = crop.random_map(
        {"id": "v", "image": (volume * 255).astype(np.uint8), "iie": iie}, np.random.default_rng(1)
    )
    assert out["crop"].shape == (2, 8, 8, 8) and out["anchor"].shape == (2, 4, 3)
    assert out["angle"].shape == (2, 3)
    image = (volume * 255).astype(np.uint8).astype(np.float32) / 255
    for m in range(2):
        first, first_crop = out["anchor"][m][0], out["crop_anchor"][m][0]
        assert out["crop"][m][tuple(first_crop)] == pytest.approx(image[tuple(first)], abs=1e-6)
        # the further anchors: the voxel nearest to what their crop voxel shows
        coords = augment.rotation_coordinates(first, first_crop, 8, out["angle"][m])
        for a, c in zip(out["anchor"][m][1:], out["crop_anchor"][m][1:], strict=True):
            np.testing.assert_array_equal(a, np.rint(coords[(slice(None), *c)]))


def test_prepared_volumes_hold_the_grid_and_the_mapping_back(tmp_path) -> None:
    """A prepared copy of volumes (TFDS): the volume, its IIE map (a ball footprint) and its
    landmarks on the training grid, the original landmarks, size and per-axis spacing, from
    which evaluation measures millimetres; the crop view draws from it."""
    from piaug import evaluate
    from piaug.data import transforms

    ds = data.load("synthetic3d", num_images=2, size=(24, 40, 48))
    prepared = prepare.prepare(ds, image_size=(16, 32, 32), footprint="ball(1)", cache_dir=tmp_path)
    first = prepared.source[0]
    assert first["image"].shape == (16, 32, 32) and first["iie"].shape == (16, 32, 32)
    assert first["image"].dtype == np.uint8 and first["iie"].max() > 1.0
    np.testing.assert_allclose(first["spacing"], ds[0]["spacing"], rtol=1e-6)
    np.testing.assert_array_equal(first["original_size"], (24, 40, 48))
    np.testing.assert_allclose(first["landmarks_original"], ds[0]["landmarks"], rtol=1e-6)
    np.testing.assert_allclose(
        first["landmarks"],
        prepare.resize_points(ds[0]["landmarks"], (24, 40, 48), (16, 32, 32)),
        rtol=1e-6,
    )
    truth = evaluate.truth([prepared.source[i] for i in range(2)], (16, 32, 32))
    exact = np.stack([prepared.source[i]["landmarks"] for i in range(2)])
    out = evaluate.evaluate(exact, **truth)  # the grid's own landmarks: small errors
    grid_voxel = np.linalg.norm(evaluate.grid_spacing(truth["spacing"], (24, 40, 48), (16, 32, 32)))
    assert out["full"]["mre_mm"] < 0.01 and out["grid"]["mre_mm"] < grid_voxel  # truncation
    view = transforms.AnchorCrop(crop_size=16).random_map(first, np.random.default_rng(0))
    assert view["crop"].shape == (16, 16, 16) and view["anchor"].shape == (3,)
    with pytest.raises(UserError, match=r"\(depth, height, width\)"):
        prepare.check_image_size((16, 32, 32, 32))
