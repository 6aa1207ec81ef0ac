"""Prepared (TFDS array_record) datasets: content, resizing, fingerprint and rebuilds."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
from conftest import truncated_folder
from skimage import transform

from piaug import data, info
from piaug.data import prepare
from piaug.errors import UserError


def _synthetic(num_images=3, size=(100, 90)):
    return data.load("synthetic", num_images=num_images, size=size, num_landmarks=4)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return _synthetic(), prepare.prepare(
        _synthetic(), image_size=(64, 48), footprint="disk(2)", cache_dir=cache
    )


def test_examples_hold_resized_image_iie_and_landmarks(prepared):
    dataset, p = prepared
    assert len(p) == 3 and p.ids == dataset.ids
    for i in range(3):
        ex, original = p.source[i], dataset[i]
        assert ex["id"].decode() == original["id"]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (64, 48)
        np.testing.assert_array_equal(
            ex["image"], prepare.resize_image(original["image"], (64, 48))
        )
        # IIE at the original resolution, then resized (docs/design.md 1)
        iie = np.asarray(info.entropy_map(original["image"], info.disk(2)))
        np.testing.assert_allclose(ex["iie"], prepare.resize_bilinear(iie, (64, 48)), atol=1e-6)
        np.testing.assert_array_equal(ex["landmarks_original"], original["landmarks"])
        scale = np.array([48 / 90, 64 / 100])
        np.testing.assert_allclose(
            ex["landmarks"], (original["landmarks"] + 0.5) * scale - 0.5, rtol=1e-6
        )
        assert ex["spacing"] == np.float32(original["spacing"])
        assert ex["original_size"].tolist() == [100, 90]
    assert p.metadata["footprint"] == "disk(2)" and len(p.metadata["iie_max"]) == 3


def test_resize_bilinear_is_opencvs_inter_linear():
    x = np.random.default_rng(0).random((37, 23))
    for size in [(10, 7), (64, 50), (37, 23)]:
        ref = transform.resize(x, size, order=1, mode="edge", anti_aliasing=False)
        np.testing.assert_allclose(prepare.resize_bilinear(x, size), ref, atol=1e-6)


def test_resized_points_follow_the_image():
    image = np.zeros((200, 160), np.uint8)
    image[120:124, 30:34] = 255  # a blob centred on (x, y) = (31.5, 121.5)
    small = prepare.resize_image(image, (50, 40)).astype(np.float64)
    rows, cols = np.indices(small.shape)
    centroid = [(cols * small).sum() / small.sum(), (rows * small).sum() / small.sum()]
    np.testing.assert_allclose(
        prepare.resize_points([[31.5, 121.5]], (200, 160), (50, 40))[0], centroid, atol=1e-3
    )


def test_built_once_and_rebuilt_when_settings_change(prepared, tmp_path, capsys, caplog):
    dataset = _synthetic()
    caplog.set_level(logging.INFO)
    first = prepare.prepare(dataset, image_size=(64, 48), footprint="disk(2)", cache_dir=tmp_path)
    # TFDS's notes on a first preparation are not the user's business: nothing is downloaded
    assert "Downloading and preparing" not in capsys.readouterr().out
    assert "Variant folder" not in caplog.text and "preparing SyntheticDataset" in caplog.text
    files = sorted(first.path.glob("*.array_record*"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = prepare.prepare(dataset, image_size=(64, 48), footprint="disk(2)", cache_dir=tmp_path)
    assert again.path == first.path and [f.stat().st_mtime_ns for f in files] == stamps
    other = prepare.prepare(dataset, image_size=(64, 48), footprint="disk(3)", cache_dir=tmp_path)
    assert other.path != first.path
    assert "footprint 'disk(2)' -> 'disk(3)'" in caplog.text  # why a new copy is built
    resized = prepare.prepare(dataset, image_size=(32, 32), footprint="disk(2)", cache_dir=tmp_path)
    assert resized.path not in (first.path, other.path)
    assert first.path.exists()  # earlier copies are kept, never overwritten


def test_original_resolution_maps_are_kept_and_reused_at_another_size(
    tmp_path, monkeypatch, caplog
):
    """With ``full_resolution_cache`` a build at another size reads the stored maps (no entropy
    computed) and gives the prepared copy a build without them gives; without it nothing is
    kept. A damaged stored map is computed again."""
    caplog.set_level(logging.INFO)
    dataset = _synthetic(num_images=5)
    cached, plain = tmp_path / "cached", tmp_path / "plain"
    prepare.prepare(
        dataset,
        image_size=(64, 48),
        footprint="disk(2)",
        cache_dir=cached,
        full_resolution_cache=True,
    )
    store = prepare.full_iie_folder(dataset, "disk(2)", "train", cached)
    maps = sorted(store.glob("*.npy"))
    assert [m.name for m in maps] == [f"{i:06d}.npy" for i in range(5)]
    np.testing.assert_array_equal(
        np.load(maps[3]), info.entropy_map(dataset[3]["image"], info.disk(2))
    )
    reference = prepare.prepare(dataset, image_size=(32, 40), footprint="disk(2)", cache_dir=plain)
    assert not (plain / dataset.name / prepare.FULL_IIE_DIR).exists()
    np.save(maps[1], np.zeros((3, 3), np.float32))  # the wrong shape: computed again

    computed = []
    entropy_map = info.entropy_map
    monkeypatch.setattr(
        info,
        "entropy_map",
        lambda images, fp: computed.append(len(images)) or entropy_map(images, fp),
    )
    resized = prepare.prepare(
        dataset,
        image_size=(32, 40),
        footprint="disk(2)",
        cache_dir=cached,
        full_resolution_cache=True,
    )
    assert computed == [1]  # only the damaged map
    assert "4 of 5 read from" in caplog.text
    for i in range(5):
        for key in ("iie", "image", "landmarks"):
            np.testing.assert_array_equal(resized.source[i][key], reference.source[i][key])
    assert np.load(maps[1]).shape == dataset[1]["image"].shape


class _FileDataset:
    """A one-image dataset read from files, to see the fingerprint follow its sources."""

    name, num_landmarks = "folder", 1

    def __init__(self, image_path, annotation_path):
        self.source_files = [image_path, annotation_path]
        self.ids, self.options, self.report = ["a"], {"split": "all"}, []
        self._image, self._annotation = image_path, annotation_path

    def __len__(self):
        return 1

    def __getitem__(self, i):
        x, y = map(float, self._annotation.read_text().split(","))
        image = np.load(self._image)
        return {
            "image": image,
            "landmarks": np.array([[x, y]], np.float32),
            "spacing": 0.1,
            "id": "a",
        }


def test_a_copy_from_an_older_layout_is_refused_naming_its_folder(prepared, monkeypatch):
    _, p = prepared
    monkeypatch.setattr(prepare, "TFDS_SPLIT", "renamed")  # as if written with another split
    with pytest.raises(UserError, match=r"has splits \['examples'\].*Delete that folder"):
        prepare.prepare(
            _synthetic(), image_size=(64, 48), footprint="disk(2)", cache_dir=p.path.parents[3]
        )


def test_a_copy_being_built_elsewhere_is_waited_for(tmp_path, caplog):
    """Two jobs preparing the same copy at once: the second waits for the first's lock, then
    finds the copy built and reuses it."""
    import fcntl
    import threading

    caplog.set_level(logging.INFO)
    dataset = _synthetic()
    first = prepare.prepare(dataset, image_size=(32, 32), footprint="disk(2)", cache_dir=tmp_path)
    key = first.path.parent.parent.name  # cache/NAME/KEY/builder/version
    lock = tmp_path / dataset.name / f"{key}.lock"
    shutil.rmtree(tmp_path / dataset.name / key)  # as if the other job had not finished
    held = open(lock, "a")  # noqa: SIM115
    fcntl.flock(held, fcntl.LOCK_EX)  # the other job holds the lock ...

    def other_job_finishes():
        prepare.prepare(dataset, image_size=(32, 32), footprint="disk(2)", cache_dir=tmp_path / "x")
        shutil.copytree(tmp_path / "x" / dataset.name / key, tmp_path / dataset.name / key)
        fcntl.flock(held, fcntl.LOCK_UN)  # ... and releases it once its copy is in place

    timer = threading.Timer(1.0, other_job_finishes)
    timer.start()
    again = prepare.prepare(dataset, image_size=(32, 32), footprint="disk(2)", cache_dir=tmp_path)
    timer.join()
    held.close()
    assert "waiting for another process that is preparing" in caplog.text
    assert "(built meanwhile)" in caplog.text and again.path == first.path
    assert len(again) == len(first) and not lock.exists()


def test_fingerprint_follows_the_source_files(tmp_path):
    image, annotation = tmp_path / "a.npy", tmp_path / "a.csv"
    np.save(image, np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    annotation.write_text("3,4")
    dataset = _FileDataset(image, annotation)
    key = prepare.fingerprint(dataset, {"s": 1})
    assert prepare.fingerprint(dataset, {"s": 1}) == key
    assert prepare.fingerprint(dataset, {"s": 2}) != key
    annotation.write_text("3,5")  # new annotation content
    key2 = prepare.fingerprint(dataset, {"s": 1})
    assert key2 != key
    np.save(image, np.zeros((40, 41), np.uint8))  # an image rewritten (size changes)
    assert prepare.fingerprint(dataset, {"s": 1}) != key2
    before = prepare.fingerprint(dataset, {"s": 1})
    os.utime(image, ns=(1, 1))  # touched, same content: the same copy serves
    assert prepare.fingerprint(dataset, {"s": 1}, tmp_path / "cache") == before
    moved = tmp_path / "elsewhere"  # copied to another folder: the same copy serves
    moved.mkdir()
    shutil.copy(image, moved / image.name)
    shutil.copy(annotation, moved / annotation.name)
    copied = _FileDataset(moved / image.name, moved / annotation.name)
    assert prepare.fingerprint(copied, {"s": 1}, tmp_path / "cache") == before
    digests = json.loads((tmp_path / "cache" / prepare.DIGESTS_FILE).read_text())
    assert len(digests) == 4  # each file's content read once, remembered by path and time


def test_any_reader_split_name_works(tmp_path):
    """TFDS reserves 'all'; a prepared copy keeps the reader's split name beside its own."""
    image, annotation = tmp_path / "a.npy", tmp_path / "a.csv"
    np.save(image, np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    annotation.write_text("3,4")
    p = prepare.prepare(
        _FileDataset(image, annotation),
        image_size=(32, 32),
        split="all",
        cache_dir=tmp_path / "cache",
    )
    assert p.split == "all" and len(p) == 1 and p.source[0]["id"] == b"a"


def test_a_truncated_image_stops_the_build_naming_the_file(tmp_path):
    root = truncated_folder(tmp_path / "mine")
    bad = root / "images" / "c1.png"
    dataset = data.load("folder", root, spacing=0.1)
    with pytest.raises(UserError, match="cannot decode image .*c1.png.*truncated"):
        prepare.prepare(dataset, image_size=(32, 32), footprint="disk(2)", cache_dir=tmp_path / "c")
    left = [p.name for p in (tmp_path / "c").rglob("*")]
    assert left == [prepare.DIGESTS_FILE]  # no half-built copy, no empty folder
    bad.unlink()  # fixed by removing the image and its row: the next call builds
    (root / "landmarks.csv").write_text("image,1_x,1_y\nc0.png,3,4\nc2.png,7,8\n")
    fixed = data.load("folder", root, spacing=0.1)
    p = prepare.prepare(fixed, image_size=(32, 32), footprint="disk(2)", cache_dir=tmp_path / "c")
    assert p.ids == ["c0", "c2"]


def test_bad_settings_and_examples_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="config.data.image_size"):
        prepare.prepare(_synthetic(), image_size=(4, 64), cache_dir=tmp_path)
    with pytest.raises(UserError, match="config.info.footprint='ring\\(2\\)'"):
        prepare.prepare(_synthetic(), image_size=(64, 64), footprint="ring(2)", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "landmarks, message",
    [
        ([[1.0, 2.0], [np.nan, 3.0]], "landmark 2 at"),
        ([[1.0, 2.0], [80.0, 3.0]], "outside the 80 x 96 image"),
        ([[-0.5, 2.0]], "landmark 1 at"),
        ([1.0, 2.0], "landmarks must be \\(L, 2\\)"),
    ],
)
def test_bad_landmarks_name_the_image(landmarks, message):
    example = {"id": "case_007.png", "image": np.zeros((96, 80), np.uint8), "spacing": 0.1}
    example["landmarks"] = np.asarray(landmarks, np.float32)
    with pytest.raises(UserError, match=message) as error:
        prepare.check_example(example, 0)
    assert "case_007.png" in str(error.value)
