"""Tests for the dataset readers (piaug.data: ceph, hand, folder and their common contract)."""

import csv
import io
import json
import logging
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dicom
from PIL import Image

from piaug import data
from piaug.data import ceph, common, hand, synthetic
from piaug.errors import UserError

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
CEPH = SHARED / "isbi2015_ceph_train"
HAND = SHARED / "hand_xray_sample"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"the shared real data folder {SHARED} is absent"
)

W, H = 40, 30  # size of the tiny images the tests write


def _image_bytes(fmt: str, seed: int = 0, mode: str = "L", size=(W, H)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    im = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _points(key, n: int = 19, w: int = W, h: int = H) -> np.ndarray:
    """Deterministic integer points inside a w x h image for ``key``."""
    rng = np.random.default_rng(zlib.crc32(repr(key).encode()))
    return np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], 1).astype(np.float64)


def _txt(points: np.ndarray, style: int = 0) -> str:
    """A challenge annotation file: 19 'x,y' lines and then classification lines."""
    if style == 0:
        lines = [f"{x:g},{y:g}" for x, y in points]
        return "\n".join([*lines, "1", "3", "2", ""])
    lines = [f" {x:g} , {y:g} " for x, y in points]  # spaces and CRLF
    return "\r\n".join([*lines, "2", "1", ""])


def _csv_text(header_image: str, rows: list[tuple[str, np.ndarray]], extra=()) -> str:
    n = len(rows[0][1]) if rows else 19
    header = [header_image] + [f"{k}_{a}" for k in range(1, n + 1) for a in "xy"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header + [e[0] for e in extra])
    for r, (name, pts) in enumerate(rows):
        writer.writerow([name] + [f"{v:g}" for v in pts.ravel()] + [e[1][r] for e in extra])
    return buf.getvalue()


def _set(text: str, line: int, field: int, value: str) -> str:
    """``text`` with field ``field`` (0-based) of line ``line`` (1-based) set to ``value``."""
    lines = text.splitlines()
    fields = lines[line - 1].split(",")
    fields[field] = value
    lines[line - 1] = ",".join(fields)
    return "\n".join(lines) + "\n"


def _read_shared_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["image_path", "1_x", "1_y"]
    return {r[0][:3]: np.array(r[1:], dtype=np.float64).reshape(19, 2) for r in rows[1:]}


# ----------------------------------------------------------------------------------------------
# ceph: the real training data


@needs_shared
def test_ceph_real_train_split() -> None:
    ds = data.load("ceph", CEPH)
    assert isinstance(ds, common.ImageDataset) and ds.name == "ceph"
    assert len(ds) == 150 and ds.ids == [f"{i:03d}" for i in range(1, 151)]
    assert ds.num_landmarks == 19 and ds.report == []
    assert ds.options == {"split": "train", "annotation": "mean"}
    assert json.loads(json.dumps(ds.options)) == ds.options
    assert ds.source_files[:150] == [CEPH / "images" / f"{i:03d}.jpg" for i in range(1, 151)]
    assert ds.source_files[150:] == [CEPH / "junior.csv", CEPH / "senior.csv"]
    assert ds.image_path(-1) == CEPH / "images" / "150.jpg"
    ex = ds[0]  # the only full-size decode of this file
    assert set(ex) == {"image", "landmarks", "spacing", "id"}
    assert ex["image"].shape == (2400, 1935) and ex["image"].dtype == np.uint8
    assert ex["image"].max() > ex["image"].min()
    assert ex["landmarks"].dtype == np.float32 and ex["landmarks"].shape == (19, 2)
    assert ex["spacing"] == 0.1 and isinstance(ex["spacing"], float) and ex["id"] == "001"
    with pytest.raises(IndexError):
        ds[150]
    with pytest.raises(IndexError):
        ds.image_path(-151)
    # The two-doctor mean, by hand from both csv files (rows are in different orders there).
    senior = _read_shared_csv(CEPH / "senior.csv")
    junior = _read_shared_csv(CEPH / "junior.csv")
    np.testing.assert_array_equal(ex["landmarks"], (senior["001"] + junior["001"]) / 2)
    for i in (16, 100, 149):
        a = ds.annotation(i)
        assert a["id"] == f"{i + 1:03d}"
        expected = (senior[a["id"]] + junior[a["id"]]) / 2  # not rounded: halves stay
        np.testing.assert_array_equal(a["landmarks"], expected.astype(np.float32))
    assert (ex["landmarks"] % 1 == 0.5).any()
    assert data.load("ceph", CEPH, split="all").ids == ds.ids


@needs_shared
def test_ceph_real_single_doctor_and_test_split() -> None:
    senior = _read_shared_csv(CEPH / "senior.csv")
    ds = data.load("ceph", str(CEPH), annotation="senior")
    assert ds.source_files[-1] == CEPH / "senior.csv" and len(ds.source_files) == 151
    got = np.stack([ds.annotation(i)["landmarks"] for i in range(len(ds))])
    np.testing.assert_array_equal(got, np.stack([senior[i] for i in ds.ids]))
    for split in ("test", "test1", "test2"):
        with pytest.raises(UserError, match="missing") as e:
            data.load("ceph", CEPH, split=split)
        assert "151" in str(e.value) or "301" in str(e.value)
        assert str(CEPH / "images") in str(e.value) and "150 images" in str(e.value)


# ----------------------------------------------------------------------------------------------
# ceph: the challenge layout and the Kaggle mirror, written here


def _make_challenge(root: Path, folders: dict[str, range], doctors, placement: str) -> dict:
    bmp = _image_bytes("BMP")
    for folder, ids in folders.items():
        for i in ids:
            _write(root / "RawImage" / folder / f"{i:03d}.bmp", bmp)
    truth = {}
    for d in doctors:
        base = root / "AnnotationsByMD" if placement == "AnnotationsByMD" else root
        for i in (i for ids in folders.values() for i in ids):
            truth[d, f"{i:03d}"] = pts = _points((d, i))
            _write(base / f"400_{d}" / f"{i:03d}.txt", _txt(pts, style=i % 2))
    return truth


@pytest.fixture(scope="module")
def challenge(tmp_path_factory) -> tuple[Path, dict]:
    """The full release, with every test image in Test1Data (as some repacks have it)."""
    root = tmp_path_factory.mktemp("isbi_challenge")
    folders = {"TrainingData": range(1, 151), "Test1Data": range(151, 401)}
    truth = _make_challenge(root, folders, ("senior", "junior"), "AnnotationsByMD")
    return root, truth


def test_ceph_challenge_layout_splits_and_doctors(challenge) -> None:
    root, truth = challenge
    sizes = {"train": 150, "test1": 150, "test2": 100, "test": 250, "all": 400}
    first = {"train": "001", "test1": "151", "test2": "301", "test": "151", "all": "001"}
    for split, n in sizes.items():
        ds = data.load("ceph", root, split=split)
        assert len(ds) == n and ds.ids[0] == first[split] and ds.ids == sorted(ds.ids)
    ds = data.load("ceph", root, split="test2")
    assert ds.image_path(0) == root / "RawImage" / "Test1Data" / "301.bmp"
    assert len(ds.source_files) == 100 * 3 and ds.report == []
    for i in (0, 51, 99):
        key = ds.ids[i]
        mean = (truth["senior", key] + truth["junior", key]) / 2
        np.testing.assert_array_equal(ds.annotation(i)["landmarks"], mean.astype(np.float32))
    for doctor in ("senior", "junior"):
        one = data.load("ceph", root, split="test2", annotation=doctor)
        np.testing.assert_array_equal(one.annotation(5)["landmarks"], truth[doctor, "306"])
        assert one.options == {"split": "test2", "annotation": doctor}
    ex = ds[3]
    assert ex["image"].shape == (H, W) and ex["image"].dtype == np.uint8 and ex["id"] == "304"
    expected = np.asarray(Image.open(io.BytesIO(_image_bytes("BMP"))))
    np.testing.assert_array_equal(ex["image"], expected)


def test_ceph_challenge_annotations_at_root_and_one_doctor(tmp_path) -> None:
    folders = {"TrainingData": range(1, 151), "Test2Data": range(301, 401)}
    truth = _make_challenge(tmp_path, folders, ("senior",), "root")
    ds = data.load("ceph", tmp_path, split="test2")
    assert len(ds) == 100
    np.testing.assert_array_equal(ds.annotation(0)["landmarks"], truth["senior", "301"])
    assert len(ds.report) == 1 and "only the senior" in ds.report[0]
    with pytest.raises(UserError, match="no junior") as e:
        data.load("ceph", tmp_path, annotation="junior")
    assert "400_junior" in str(e.value)
    with pytest.raises(UserError, match="150 are missing") as e:
        data.load("ceph", tmp_path, split="test1")
    assert "Test1Data" in str(e.value)
    # The same id in two folders: fine when byte-identical, an error otherwise.
    shutil.copy(tmp_path / "RawImage/TrainingData/001.bmp", tmp_path / "RawImage/Test2Data")
    assert len(data.load("ceph", tmp_path)) == 150
    _write(tmp_path / "RawImage/Test2Data/001.bmp", _image_bytes("BMP", seed=1))
    with pytest.raises(UserError, match="two different images for id 001") as e:
        data.load("ceph", tmp_path)
    assert "TrainingData/001.bmp" in str(e.value) and "Test2Data/001.bmp" in str(e.value)


def test_ceph_challenge_bad_txt_files(tmp_path) -> None:
    _make_challenge(tmp_path, {"TrainingData": range(1, 151)}, ("senior", "junior"), "root")
    txt = tmp_path / "400_junior" / "017.txt"
    good = txt.read_text()
    lines = good.splitlines()
    cases = [
        ("\n".join(lines[:18]), "line 19: the file ends after 18 lines"),
        ("\n".join([*lines[:4], "not a point", *lines[5:]]), "line 5: expected 'x,y'"),
        ("\n".join([*lines[:2], "nan,4", *lines[3:]]), "line 3: landmark 3 x = 'nan'"),
        ("\n".join([*lines[:7], f"{W},3", *lines[8:]]), "landmark 8 at .* is outside"),
    ]
    for text, message in cases:
        txt.write_text(text)
        with pytest.raises(UserError, match=message) as e:
            data.load("ceph", tmp_path)
        assert "017.txt" in str(e.value)
    txt.write_text(good)
    (tmp_path / "400_senior" / "042.txt").unlink()
    with pytest.raises(UserError, match="1 images of ceph split 'train' have no senior") as e:
        data.load("ceph", tmp_path)
    assert "042" in str(e.value) and "annotation='junior'" in str(e.value)
    assert len(data.load("ceph", tmp_path, annotation="junior")) == 150


def test_ceph_kaggle_mirror_layout(tmp_path) -> None:
    jpg = _image_bytes("JPEG")
    images = tmp_path / "cepha400" / "cepha400"
    train, test2 = range(1, 151), range(301, 401)
    for i in [*train, *test2]:
        _write(images / f"{i:03d}.jpg", jpg)
    truth = {}
    for part, ids, doctors in (("train", train, "sj"), ("test2", test2, "s")):
        for d in doctors:
            doctor = {"s": "senior", "j": "junior"}[d]
            rows = [(f"{i:03d}.jpg", _points((doctor, i))) for i in reversed(ids)]
            truth.update({(doctor, name[:3]): p for name, p in rows})
            _write(tmp_path / f"{part}_{doctor}.csv", _csv_text("image_path", rows))
    ds = data.load("ceph", tmp_path)
    assert len(ds) == 150 and ds.image_path(0) == images / "001.jpg"
    mean = (truth["senior", "150"] + truth["junior", "150"]) / 2
    np.testing.assert_array_equal(ds.annotation(-1)["landmarks"], mean.astype(np.float32))
    assert ds.source_files[-2:] == [tmp_path / "train_junior.csv", tmp_path / "train_senior.csv"]
    with pytest.raises(UserError, match="100 images of ceph split 'test2' have no junior"):
        data.load("ceph", tmp_path, split="test2")
    ds = data.load("ceph", tmp_path, split="test2", annotation="senior")
    np.testing.assert_array_equal(ds.annotation(0)["landmarks"], truth["senior", "301"])
    assert ds[1]["image"].shape == (H, W) and ds.ids[1] == "302"


def _ceph_csv_layout(root: Path, ids=(1, 2, 3), doctors=("senior",)) -> None:
    for i in ids:
        _write(root / "images" / f"{i:03d}.jpg", _image_bytes("JPEG", seed=i))
    for d in doctors:
        rows = [(f"{i:03d}.jpg", _points((d, i))) for i in ids]
        _write(root / f"{d}.csv", _csv_text("image_path", rows))


def test_ceph_csv_layout_bad_inputs(tmp_path) -> None:
    _ceph_csv_layout(tmp_path)
    assert len(data.load("ceph", tmp_path, split="all")) == 3
    senior = tmp_path / "senior.csv"
    text = senior.read_text()
    good = text.splitlines()
    short = _csv_text("image_path", [(f"{i:03d}.jpg", _points(i, 18)) for i in (1, 2, 3)])
    cases = [
        (short, "has 18 landmarks per image, the ceph dataset has 19"),
        (_set(text, 3, 38, "7,8"), "line 3: 40 fields, but the header has 39"),
        (_set(text, 4, 5, "inf"), "line 4: landmark 3 x = 'inf' is not a finite number"),
        (_set(text, 4, 2, "NaN"), "line 4: landmark 1 y = 'NaN'"),
        (_set(text, 2, 6, ""), "line 2: landmark 3 y = '' is not a number"),
        (_set(text, 2, 1, "1935"), f"line 2: landmark 1 at \\(x, y\\) = \\(1935, .* {W} x {H}"),
        ("\n".join([*good, good[1]]), "image 001 has two rows: .*line 2 and .*line 5"),
        ("\n".join(good[:3]), "1 images of ceph split 'all' have no senior .*003"),
    ]
    for text, message in cases:
        senior.write_text(text.rstrip("\n") + "\n")
        with pytest.raises(UserError, match=message) as e:
            data.load("ceph", tmp_path, split="all")
        assert "senior.csv" in str(e.value)
    # More annotations than images under split 'all': a documented skip, not an error.
    senior.write_text("\n".join(good) + "\n")
    (tmp_path / "images" / "002.jpg").unlink()
    ds = data.load("ceph", tmp_path, split="all")
    assert ds.ids == ["001", "003"] and len(ds.report) == 2  # one doctor; one id without image
    assert "1 annotated ids have no image (002)" in ds.report[1]


def test_ceph_missing_root_options_and_splits(tmp_path) -> None:
    for root in (tmp_path / "nowhere", None):
        with pytest.raises(UserError, match="figshare") as e:
            data.load("ceph", root)
        assert ceph.DOWNLOAD_INSTRUCTIONS in str(e.value)
    with pytest.raises(UserError, match="holds none of the ISBI 2015 layouts") as e:
        data.load("ceph", tmp_path)
    assert ceph.DOWNLOAD_INSTRUCTIONS in str(e.value)
    _ceph_csv_layout(tmp_path)
    with pytest.raises(UserError, match=r"unknown options for the ceph dataset: \['doctor'\]"):
        data.load("ceph", tmp_path, doctor="senior")
    with pytest.raises(UserError, match="unknown ceph split 'val'.*train, test1, test2, test"):
        data.load("ceph", tmp_path, split="val")
    with pytest.raises(UserError, match="unknown ceph annotation 'median'"):
        data.load("ceph", tmp_path, annotation="median")
    with pytest.raises(UserError, match="unknown dataset 'isbi'"):
        data.load("isbi", tmp_path)
    assert data.NAMES == ("ceph", "hand", "folder", "folder3d", "synthetic", "synthetic3d")


# ----------------------------------------------------------------------------------------------
# hand


def _shared_landmarks() -> dict[str, np.ndarray]:
    with open(HAND / "landmarks.csv", newline="") as f:
        rows = list(csv.reader(f))
    return {r[0][:-4]: np.array(r[1:], dtype=np.float64).reshape(37, 2) for r in rows[1:]}


@needs_shared
def test_hand_real_sample(caplog) -> None:
    truth = _shared_landmarks()
    with caplog.at_level(logging.WARNING):
        ds = data.load("hand", HAND)  # payer_all.csv: the first annotation file present
    assert len(ds) == 9 and ds.num_landmarks == 37 and ds.name == "hand"
    assert ds.ids == sorted(truth, key=int) and ds.ids[0] == "3167"
    options = {"split": "all", "protocol": "cc2d", "wrist": [0, 4], "annotations": "payer_all.csv"}
    assert ds.options == options and json.loads(json.dumps(ds.options)) == options
    assert ds.source_files == [HAND / "images" / f"{i}.png" for i in ds.ids] + [
        HAND / "payer_all.csv"
    ]
    assert len(ds.report) == 1 and "901 annotation rows" in ds.report[0]
    assert "3142" in ds.report[0] and "901 annotation rows" in caplog.text
    for i, key in enumerate(ds.ids):
        a = ds.annotation(i)
        np.testing.assert_array_equal(a["landmarks"], truth[key].astype(np.float32))
        width = math.dist(truth[key][0], truth[key][4])
        assert a["spacing"] == pytest.approx(50 / width, rel=1e-12)
    other = data.load("hand", HAND, annotations="landmarks.csv", wrist=(1, 5))
    assert other.report == [] and other.options["wrist"] == [1, 5]
    assert other.source_files[-1] == HAND / "landmarks.csv"
    a = other.annotation(4)
    assert a["spacing"] == pytest.approx(50 / math.dist(truth["5245"][1], truth["5245"][5]))
    assert a["spacing"] > ds.annotation(4)["spacing"]  # (1, 5) is the narrower pair
    ex = other[0]
    assert ex["image"].shape == (2350, 1600) and ex["image"].dtype == np.uint8
    assert ex["id"] == "3167"
    with pytest.raises(UserError, match="needs at least 850 annotated images.*9 were found"):
        data.load("hand", HAND, split="test")
    with pytest.raises(UserError, match="more than 300 .*9 were found.*split='all'"):
        data.load("hand", HAND, split="train", protocol="igu")


def test_hand_protocol_splits() -> None:
    rng = np.random.default_rng(0)
    ids = [str(v) for v in rng.choice(np.arange(3142, 7294), 909, replace=False)]
    ordered = sorted(ids, key=int)
    train, val, test = (hand.protocol_split(ids, "cc2d", s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (550, 59, 300)
    assert train + val + test == ordered == hand.protocol_split(ids, "cc2d", "all")
    igu_test, igu_train = (hand.protocol_split(ids, "igu", s) for s in ("test", "train"))
    assert igu_test == ordered[:300] and igu_train == ordered[300:] and len(igu_train) == 609
    assert len(hand.protocol_split(ids[:850], "cc2d", "test")) == 300
    with pytest.raises(UserError, match="is empty"):
        hand.protocol_split(ids[:850], "cc2d", "val")
    with pytest.raises(UserError, match="at least 850 .* 849 were found.*split='all'"):
        hand.protocol_split(ids[:849], "cc2d", "train")
    with pytest.raises(UserError, match="more than 300 .* 300 were found"):
        hand.protocol_split(ids[:300], "igu", "test")
    with pytest.raises(UserError, match="unknown hand split 'val' for protocol 'igu'.*train, test"):
        hand.protocol_split(ids, "igu", "val")
    with pytest.raises(UserError, match="unknown hand protocol 'payer'"):
        hand.protocol_split(ids, "payer", "train")
    assert common.sort_ids(["10", "9", "100", "case10", "case2"]) == [
        "9",
        "10",
        "100",
        "case2",
        "case10",
    ]


def _hand_folder(root: Path, ids=(3, 10, 7), folder: str = "jpg") -> dict[str, np.ndarray]:
    truth = {}
    for i in ids:
        _write(root / folder / f"{i}.jpg", _image_bytes("JPEG", seed=i))
        truth[str(i)] = _points(("hand", i), 37)
    rows = "\n".join(f"{k}," + ",".join(f"{v:g}" for v in p.ravel()) for k, p in truth.items())
    _write(root / "all.csv", rows + "\n")
    return truth


def test_hand_written_layout_and_bad_inputs(tmp_path) -> None:
    truth = _hand_folder(tmp_path)
    _write(tmp_path / "jpg" / "99.jpg", _image_bytes("JPEG"))  # an image without a row
    with open(tmp_path / "all.csv", "a") as f:  # a row without an image
        f.write("12," + ",".join(["5"] * 74) + "\n")
    ds = data.load("hand", tmp_path)
    assert ds.ids == ["3", "7", "10"] and ds.image_path(0) == tmp_path / "jpg" / "3.jpg"
    assert ds.options["annotations"] == "all.csv"
    assert len(ds.report) == 2
    assert "1 annotation rows" in ds.report[0] and "(ids 12)" in ds.report[0]
    assert "1 images in" in ds.report[1] and "99.jpg" in ds.report[1]
    np.testing.assert_array_equal(ds.annotation(1)["landmarks"], truth["7"])
    text = (tmp_path / "all.csv").read_text()
    x0, y0 = text.splitlines()[1].split(",")[1:3]
    cases = [  # line 2 is image 10; landmark 5 (0-based 4) on landmark 1: zero wrist width
        (_set(_set(text, 2, 9, x0), 2, 10, y0), "image '10' has landmarks 0 and 4 .* same point"),
        (_set(text, 2, 74, "1,1"), "line 2: 76 fields; Payer's format has 75"),
        (_set(text, 2, 1, "-inf"), "line 2: landmark 1 x = '-inf'"),
        (_set(text, 2, 0, "3"), "'3' has two rows, on lines 1 and 2"),
        (_set(text, 3, 1, "40"), "line 3: landmark 1 at .* is outside the 40 x 30 image"),
    ]
    for bad, message in cases:
        (tmp_path / "all.csv").write_text(bad)
        with pytest.raises(UserError, match=message) as e:
            data.load("hand", tmp_path)
        assert "all.csv" in str(e.value)
    (tmp_path / "all.csv").unlink()
    with pytest.raises(UserError, match="no hand annotations found") as e:
        data.load("hand", tmp_path)
    assert hand.DOWNLOAD_INSTRUCTIONS in str(e.value)
    with pytest.raises(UserError, match="annotations='x.csv'"):
        data.load("hand", tmp_path, annotations="x.csv")
    with pytest.raises(UserError, match="does not exist") as e:
        data.load("hand", tmp_path / "missing")
    assert hand.DOWNLOAD_INSTRUCTIONS in str(e.value) and "all.csv" in str(e.value)
    assert "MedicalDataAugmentationTool-HeatmapRegression" in hand.DOWNLOAD_INSTRUCTIONS
    with pytest.raises(UserError, match="wrist=\\(0, 37\\)"):
        data.load("hand", tmp_path, wrist=(0, 37))
    with pytest.raises(UserError, match=r"unknown options for the hand dataset: \['size'\]"):
        data.load("hand", tmp_path, size=3)


# ----------------------------------------------------------------------------------------------
# folder


def _folder(root: Path, rows, extra=(), images=None) -> None:
    names = images if images is not None else [r[0] for r in rows]
    for name in names:
        fmt = {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP", ".tif": "TIFF"}[Path(name).suffix]
        _write(root / "images" / Path(name).name, _image_bytes(fmt, seed=len(name)))
    _write(root / "landmarks.csv", _csv_text("image", rows, extra))


FOLDER_ROWS = [
    ("case10.png", _points("a", 3)),
    ("case2.jpg", _points("b", 3)),
    ("ct_1.bmp", _points("c", 3)),
    ("x.tif", _points("d", 3)),
]


def test_folder_spacing_column_and_split_column(tmp_path) -> None:
    split = ("split", ["train", "test", "train", "train"])
    _folder(tmp_path, FOLDER_ROWS, extra=[("spacing_mm", ["0.5", "0.25", "1", "2"]), split])
    # The image column may hold a file name or an id (the stem).
    text = (tmp_path / "landmarks.csv").read_text().replace("\nct_1.bmp,", "\nct_1,")
    (tmp_path / "landmarks.csv").write_text(text)
    ds = data.load("folder", tmp_path)
    assert ds.ids == ["case2", "case10", "ct_1", "x"] and ds.num_landmarks == 3
    assert [ds.annotation(i)["spacing"] for i in range(4)] == [0.25, 0.5, 1.0, 2.0]
    assert ds.options == {
        "split": "all",
        "spacing": None,
        "window": "auto",
        "percentiles": (0.5, 99.5),
        "limits": None,
    }
    assert ds.report == []
    assert ds.source_files[-1] == tmp_path / "landmarks.csv" and len(ds.source_files) == 5
    np.testing.assert_array_equal(ds.annotation(0)["landmarks"], FOLDER_ROWS[1][1])
    assert [ds[i]["image"].shape for i in range(4)] == [(H, W)] * 4
    train = data.load("folder", tmp_path, split="train")
    assert train.ids == ["case10", "ct_1", "x"] and train.options["split"] == "train"
    assert data.load("folder", tmp_path, split="test").image_path(0).name == "case2.jpg"
    with pytest.raises(UserError, match="no rows .* split 'val'.*'test', 'train'"):
        data.load("folder", tmp_path, split="val")
    with pytest.raises(UserError, match="both a spacing_mm column .* and the option spacing"):
        data.load("folder", tmp_path, spacing=0.1)


def test_folder_global_spacing_and_errors(tmp_path) -> None:
    _folder(tmp_path, FOLDER_ROWS)
    with pytest.raises(
        UserError, match="no spacing_mm column and case2.jpg no spacing .* spacing="
    ):
        data.load("folder", tmp_path)
    ds = data.load("folder", tmp_path, spacing=0.2)
    assert {ds.annotation(i)["spacing"] for i in range(4)} == {0.2}
    assert ds.options["spacing"] == 0.2
    assert json.loads(json.dumps(ds.options)) == {**ds.options, "percentiles": [0.5, 99.5]}
    with pytest.raises(UserError, match="split='train' needs a 'split' column"):
        data.load("folder", tmp_path, split="train", spacing=0.2)
    with pytest.raises(UserError, match="spacing=-1"):
        data.load("folder", tmp_path, spacing=-1)
    with pytest.raises(UserError, match=r"unknown options for the folder dataset: \['scale'\]"):
        data.load("folder", tmp_path, scale=2)
    (tmp_path / "landmarks.csv").unlink()
    with pytest.raises(UserError, match="landmarks.csv is missing"):
        data.load("folder", tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: _set(t, 3, 1, "nan"), "line 3: landmark 1 x = 'nan' is not a finite"),
        (lambda t: _set(t, 2, 2, ""), "line 2: 1 of the 6 landmark fields are empty"),
        (lambda t: _set(t, 5, 6, "1,2"), "line 5: 8 fields, but the header has 7"),
        (lambda t: _set(t, 4, 1, f"{W - 0.5}"), "line 4: landmark 1 at .* outside the 40 x 30"),
        (lambda t: _set(t, 4, 4, "-0.1"), "line 4: landmark 2 at .* outside"),
        (lambda t: t + "case10.png,1,2,3,4,5,6\n", "'case10' has two rows, on lines 2 and 6"),
        (lambda t: t + "y.png,1,2,3,4,5,6\n", "1 rows name images that are not in .*'y.png'"),
        (lambda t: t.replace("\nx.tif", "\nx.png"), "'x.png'"),
        (lambda t: t.replace("1_x", "a_x"), "line 1 \\(header\\): unknown column 'a_x'"),
        (lambda t: t.replace(",3_x,3_y", ",3_x,4_y"), "missing 3_y"),
    ],
)
def test_folder_bad_csv(tmp_path, edit, message) -> None:
    _folder(tmp_path, FOLDER_ROWS)
    path = tmp_path / "landmarks.csv"
    path.write_text(edit(path.read_text()))
    with pytest.raises(UserError, match=message) as e:
        data.load("folder", tmp_path, spacing=1.0)
    assert str(path) in str(e.value)


def test_folder_unlabelled_rows_and_images(tmp_path) -> None:
    """Blank landmark fields (and spacing) or no row at all: an unlabelled image; a header
    without rows: every image unlabelled."""
    _folder(tmp_path, FOLDER_ROWS, extra=[("spacing_mm", ["0.5", "0.25", "1", "2"])])
    text = (tmp_path / "landmarks.csv").read_text().splitlines()
    text[2] = "case2.jpg" + "," * 7  # image, six blank landmark fields, blank spacing
    (tmp_path / "landmarks.csv").write_text("\n".join(text) + "\n")
    _write(tmp_path / "images" / "new.png", _image_bytes("PNG"))
    ds = data.load("folder", tmp_path)
    labelled = [np.isfinite(ds[i]["landmarks"]).all() for i in range(len(ds))]
    assert dict(zip(ds.ids, labelled, strict=True)) == {
        "case2": False,
        "case10": True,
        "ct_1": True,
        "new": False,
        "x": True,
    }
    assert np.isnan(ds[ds.ids.index("new")]["spacing"])
    (tmp_path / "landmarks.csv").write_text(text[0] + "\n")
    ds = data.load("folder", tmp_path)
    assert len(ds) == 5 and all(np.isnan(ds[i]["landmarks"]).all() for i in range(5))
    assert any("no image has landmarks" in r for r in ds.report)


def test_folder_image_problems(tmp_path) -> None:
    _folder(tmp_path, FOLDER_ROWS)
    _write(tmp_path / "images" / "extra.png", _image_bytes("PNG"))
    ds = data.load("folder", tmp_path, spacing=1.0)  # an image without a row: unlabelled
    assert "extra" in ds.ids and np.isnan(ds[ds.ids.index("extra")]["landmarks"]).all()
    assert any("1 images of" in r and "(extra.png): unlabelled" in r for r in ds.report)
    (tmp_path / "images" / "extra.png").unlink()
    _write(tmp_path / "images" / "x.png", _image_bytes("PNG"))
    with pytest.raises(UserError, match="two images for one id 'x'"):
        data.load("folder", tmp_path, spacing=1.0)
    (tmp_path / "images" / "x.png").unlink()
    # Truncated files: the header reads, the error comes at ds[i] and names the file.
    for name in ("case10.png", "case2.jpg"):
        path = tmp_path / "images" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = data.load("folder", tmp_path, spacing=1.0)
    assert ds[2]["image"].shape == (H, W)
    for i, name in ((0, "case2.jpg"), (1, "case10.png")):
        with pytest.raises(UserError, match="cannot decode image .*truncated") as e:
            ds[i]
        assert name in str(e.value)
    # Unreadable, 16-bit and colour images.
    (tmp_path / "images" / "case2.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*case2.jpg"):
        data.load("folder", tmp_path, spacing=1.0)
    rgb = np.repeat(np.arange(H * W, dtype=np.uint8).reshape(H, W, 1), 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "images" / "case2.jpg", format="PNG")
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(tmp_path / "images" / "case10.png")
    ds = data.load("folder", tmp_path, spacing=1.0)
    np.testing.assert_array_equal(ds[0]["image"], rgb[..., 0])  # gray as RGB stays exact
    assert (ds[1]["image"] == 7).all()


def _ramp16() -> np.ndarray:
    """A 16-bit image: a ramp 1000..1000 + 10 (H W - 1), two outliers of 0 and 65535."""
    values = 1000 + 10 * np.arange(H * W, dtype=np.uint16).reshape(H, W)
    values[0, 0], values[-1, -1] = 0, 65535
    return values


def _percentile_8bit(values: np.ndarray, lo=0.5, hi=99.5) -> np.ndarray:
    a, b = np.percentile(values.astype(np.float64), (lo, hi))
    return np.rint(np.clip((values - a) * 255 / (b - a), 0, 255)).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_deep_images_are_windowed_to_8_bits(tmp_path, fmt) -> None:
    values = _ramp16()
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(values).save(path, format=fmt)
    assert Image.open(path).mode.startswith("I")  # 16-bit as Pillow opens it
    assert common.image_size(path) == (W, H)
    image = common.read_image(path)  # auto: no DICOM window, so the percentiles
    np.testing.assert_array_equal(image, _percentile_8bit(values))
    assert image[0, 0] == 0 and image[-1, -1] == 255  # the outliers clip
    wide = common.read_image(path, common.Window("percentile", (5, 95)))
    np.testing.assert_array_equal(wide, _percentile_8bit(values, 5, 95))
    full = common.read_image(path, common.Window("range"))
    np.testing.assert_array_equal(full, np.rint(values / 65535 * 255).astype(np.uint8))
    floats = tmp_path / "f.tif"
    Image.fromarray(values.astype(np.float32) / 7).save(floats)
    np.testing.assert_array_equal(common.read_image(floats), _percentile_8bit(values / 7))
    with pytest.raises(UserError, match="window='log'"):
        common.Window("log")
    with pytest.raises(UserError, match=r"percentiles=\(50, 10\)"):
        common.Window("auto", (50, 10))


def test_dicom_images_their_window_spacing_and_errors(tmp_path) -> None:
    values = _ramp16()
    plain = write_dicom(tmp_path / "plain.dcm", values)
    np.testing.assert_array_equal(common.read_image(plain), _percentile_8bit(values))
    assert common.image_size(plain) == (W, H) and common.dicom_spacing(plain) is None
    # Its own window (the first of two) and rescale: stored s -> 2 s - 1000, window 3000 +- 500.
    windowed = write_dicom(
        tmp_path / "w.dcm",
        values,
        WindowCenter=[3000, 0],
        WindowWidth=[1000, 1],
        RescaleSlope=2,
        RescaleIntercept=-1000,
        PixelSpacing=[0.1, 0.1],
    )
    expected = np.rint(np.clip((2.0 * values - 1000 - 2500) * 255 / 1000, 0, 255))
    np.testing.assert_array_equal(common.read_image(windowed), expected.astype(np.uint8))
    rescaled = 2.0 * values - 1000
    np.testing.assert_array_equal(
        common.read_image(windowed, common.Window("percentile")), _percentile_8bit(rescaled)
    )
    inverted = write_dicom(tmp_path / "m1.dcm", values, PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_array_equal(common.read_image(inverted), 255 - _percentile_8bit(values))
    assert common.dicom_spacing(windowed) == pytest.approx(0.1)
    odd = write_dicom(tmp_path / "odd.dcm", values, ImagerPixelSpacing=[0.1, 0.2])
    with pytest.raises(UserError, match="odd.dcm: ImagerPixelSpacing 0.1 x 0.2 mm is not square"):
        common.dicom_spacing(odd)
    frames = write_dicom(tmp_path / "frames.dcm", np.stack([values, values]), NumberOfFrames=2)
    with pytest.raises(UserError, match="frames.dcm has 2 frames"):
        common.image_size(frames)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a dicom file at all")
    with pytest.raises(UserError, match="cannot read DICOM file .*broken.dcm"):
        common.read_image(broken)
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(windowed.read_bytes()[:-500])
    with pytest.raises(UserError, match="cut.dcm"):
        common.read_image(truncated)


def test_folder_of_dicom_and_16_bit_images(tmp_path) -> None:
    """DICOM rows without a spacing take their header's; the reader's window options apply."""
    values = _ramp16()
    write_dicom(tmp_path / "images" / "a.dcm", values, PixelSpacing=[0.15, 0.15])
    write_dicom(tmp_path / "images" / "b.dcm", values)
    Image.fromarray(values).save(tmp_path / "images" / "c.png")
    rows = [(n, _points(n, 2)) for n in ("a.dcm", "b.dcm", "c.png")]
    _write(
        tmp_path / "landmarks.csv", _csv_text("image", rows, [("spacing_mm", ["", "0.3", "0.2"])])
    )
    ds = data.load("folder", tmp_path, window="range")
    assert [ds[i]["spacing"] for i in range(3)] == [pytest.approx(0.15), 0.3, 0.2]
    full = np.rint(values / 65535 * 255).astype(np.uint8)
    for i in range(3):
        np.testing.assert_array_equal(ds[i]["image"], full)
    _write(tmp_path / "landmarks.csv", _csv_text("image", rows, [("spacing_mm", ["", "", "0.2"])]))
    with pytest.raises(UserError, match="line 3: spacing_mm is empty"):
        data.load("folder", tmp_path)


def test_a_datasets_report_is_logged_once(tmp_path, caplog) -> None:
    _folder(tmp_path, FOLDER_ROWS)
    _write(tmp_path / "images" / "extra.png", _image_bytes("PNG"))
    caplog.set_level(logging.WARNING)
    for _ in range(3):  # the stages open a dataset several times
        ds = data.load("folder", tmp_path, spacing=1.0)
    assert ds.report and caplog.text.count("(extra.png): unlabelled") == 1


def test_folder_missing_root(tmp_path) -> None:
    with pytest.raises(UserError, match="(?s)does not exist.*ROOT/images/"):
        data.load("folder", tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------
# the synthetic set has the same attributes


def test_synthetic_has_the_dataset_attributes() -> None:
    ds = data.load("synthetic", split="test", seed=4, num_images=3, size=(64, 64))
    assert ds.name == "synthetic" and len(ds) == 3 and ds.num_landmarks == 19
    assert ds.ids == ["synthetic-5-0000", "synthetic-5-0001", "synthetic-5-0002"]
    assert ds.source_files == [] and ds.report == [] and ds.image_path(2) is None
    assert ds.options == {
        "split": "test",
        "num_images": 3,
        "seed": 4,
        "size": [64, 64],
        "num_landmarks": 19,
    }
    assert json.loads(json.dumps(ds.options)) == ds.options
    assert isinstance(ds, synthetic.SyntheticDataset) and ds[1]["id"] == ds.ids[1]
    with pytest.raises(UserError, match="split"):
        data.load("synthetic", split="all")
    with pytest.raises(UserError, match="num_images"):
        data.load("synthetic", num_images=0)
