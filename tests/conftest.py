"""Shared test set-up: the two tiers, the temporary caches and the one tiny pipeline run.

* Tiers: plain ``pytest`` runs the fast tier (in-process, under 3 minutes on 2 cores);
  ``pytest --slow`` adds the tests marked ``slow`` (multi-device, multi-process, kill/resume,
  sweep and data-prep subprocesses). An explicit ``-m`` expression picks tests itself.
  ``-n 2`` (pytest-xdist) runs them in two worker processes, as CI does: most of a test's time
  is one core compiling.
* Prepared datasets of the tests go to a temporary cache, never to the user's ~/.cache; the
  compiled programs too (shared by the test's subprocesses, so each is compiled once a session,
  and by the workers of pytest-xdist).
* ``tiny_run``: ``configs/test.py``'s whole pipeline, run once a session through the command
  line; the tests of the stages read its files, and a test that runs stages in it again takes
  ``tiny_run_copy``. It starts with the session (the first worker's), in the background, when
  any collected test needs it, while the tests that do not need it run (its compiled programs
  land in the session's compilation cache, which the in-process pipeline tests then reuse); the
  tests that use the pipeline run last.
"""

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# LLVM at -O0 compiles three times faster, and the tests' programs are small enough that they
# run no slower for it (measured: 102 s against 117 s for the numeric modules). Set before JAX
# starts its backend; a user's own XLA_FLAGS are kept.
# The subprocesses of the tests use the same flags (a program compiled under other flags is
# another entry of the compilation cache).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the slow tier: multi-device, multi-process, kill/resume, sweep and "
        "data-prep subprocess tests",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a subprocess test of the slow tier (run with --slow, or -m slow)"
    )


_PIPELINE_FIXTURES = {"tiny_run", "tiny_config"}  # the tests that run the pipeline


def pytest_collection_modifyitems(config, items):
    if not (config.getoption("--slow") or config.getoption("markexpr")):
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]
    # The pipeline's tests after the others, the slow tier last (stable otherwise): the
    # background run has time to finish, and its compiled programs serve the later runs.
    items.sort(
        key=lambda item: (
            item.get_closest_marker("slow") is not None,
            bool(_PIPELINE_FIXTURES & set(item.fixturenames)),
        )
    )
    config.stash[_NEEDS_RUN] = any("tiny_run" in item.fixturenames for item in items)


_NEEDS_RUN = pytest.StashKey[bool]()


class _Background:
    """The tiny config's whole run through the command line, started now, awaited later; its
    exit status lands in ``rc`` beside it, where any worker of pytest-xdist can await it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.log = workdir.parent / "run.log"
        self.rc = workdir.parent / "rc"
        self.process = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "piaug.main", "--config=configs/test.py"]
        self.process = subprocess.Popen(
            [
                "bash",
                "-c",
                f'"$@" > "{self.log}" 2>&1; echo $? > "{self.rc}.part"; '
                f'mv "{self.rc}.part" "{self.rc}"',
                "run",
                *cmd,
                f"--workdir={self.workdir}",
            ],
            cwd=REPO,
            start_new_session=True,
        )

    def result(self) -> Path:
        deadline = time.monotonic() + 900
        while not self.rc.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"the tiny run took over 900 s:\n{_tail(self.log)}")
            time.sleep(0.5)
        if self.rc.read_text().strip() != "0":
            raise AssertionError(f"the tiny run failed:\n{_tail(self.log)}")
        return self.workdir

    def stop(self, wait: bool) -> None:
        """At the session's end: kill the run if it still goes, or with ``wait`` (another
        worker may need it) let it finish first."""
        if self.process is None or self.process.poll() is not None:
            return
        if wait:
            try:
                self.process.wait(timeout=900)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(self.process.pid, signal.SIGKILL)


def _tail(path: Path) -> str:
    return path.read_text()[-4000:] if path.exists() else f"({path} not written)"


@pytest.fixture(autouse=True, scope="session")
def _piaug_cache(tmp_path_factory, request):
    # pytest-xdist's workers share their base's parent: one cache of prepared data and
    # compiled programs, and one tiny run, started by the first worker that needs it
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if worker else base
    cache = shared / "piaug_cache"
    cache.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("PIAUG_CACHE", str(cache))
    mp.setenv("JAX_COMPILATION_CACHE_DIR", str(cache / "jax"))
    jax.config.update("jax_compilation_cache_dir", str(cache / "jax"))
    background = _Background(shared / "tiny_run" / "run")
    if request.config.stash.get(_NEEDS_RUN, False):
        try:
            background.workdir.parent.mkdir()  # atomic: this worker is the first
            background.start()
        except FileExistsError:
            pass
    yield background
    background.stop(wait=worker is not None)
    mp.undo()


def folder_config(root: Path, images: int, labelled: int, empty: int = 0):
    """configs/test.py on a folder (``ROOT/images/``, ``ROOT/landmarks.csv``) of ``images``
    synthetic images: the first ``labelled`` with their landmarks, the next ``empty`` with a row
    of empty landmarks, the rest with no row; every image in the one split ``all``."""
    from PIL import Image

    from piaug import data, defaults

    (root / "images").mkdir(parents=True)
    synthetic = data.spec("synthetic").load(
        None, split="train", num_images=images, size=(96, 80), num_landmarks=5, seed=0
    )
    rows = ["image," + ",".join(f"{k}_{a}" for k in range(1, 6) for a in "xy")]
    for i in range(images):
        ex = synthetic[i]
        Image.fromarray(ex["image"]).save(root / "images" / f"c{i}.png")
        if i < labelled:
            rows.append(f"c{i}.png," + ",".join(f"{v:.2f}" for v in ex["landmarks"].ravel()))
        elif i < labelled + empty:
            rows.append(f"c{i}.png" + "," * 10)
    (root / "landmarks.csv").write_text("\n".join(rows) + "\n")
    config = load_config("test")
    config.data.name, config.data.dir = "folder", str(root)
    config.data.split = config.eval.split = "all"
    config.data.options = defaults.dataset_options("folder")
    config.data.options.spacing = 0.1
    return config


def load_config(name: str = "test", arg: str | None = None):
    """``configs/NAME.py``'s ``get_config(arg)``, imported by path (as the CLI does)."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture
def tiny_config():
    """A fresh ``configs/test.py`` config (tests change it freely)."""
    return load_config("test")


@pytest.fixture(scope="session")
def tiny_run(_piaug_cache):
    """The tiny config's whole run, all six stages: the baseline's 6 steps, the estimate,
    piaug's 6 steps, matching on the test split, the figures (its workdir; its log beside
    it, ``run.log``)."""
    return _piaug_cache.result()


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A copy of the tiny run, for a test that runs stages in it or changes its files: the
    run itself is shared by every test (and every worker of pytest-xdist)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture
def logs(caplog):
    """The log lines (absl's included) of the test, as one string."""
    caplog.set_level(logging.INFO)
    return caplog


def write_dicom(path: Path, values, **header) -> Path:
    """A DICOM file of 16-bit ``values`` (``(H, W)``, or ``(F, H, W)`` with NumberOfFrames)
    and the ``header`` attributes given."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns = values.shape[-2:]
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = header.pop("PhotometricInterpretation", "MONOCHROME2")
    for key, value in header.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(values, np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def truncated_folder(root: Path) -> Path:
    """A folder dataset at ``root`` of three 60 x 50 images, ``c1.png`` cut in half, and a
    landmarks.csv with one landmark each; returns ``root``."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (60, 50), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"c{i}.png")
    bad = root / "images" / "c1.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    (root / "landmarks.csv").write_text("image,1_x,1_y\nc0.png,3,4\nc1.png,5,6\nc2.png,7,8\n")
    return root


def assert_drawn(path: Path, size: tuple[int, int] | None = None) -> None:
    """``path`` is a PNG (of ``size`` (width, height) pixels, to a pixel, when given) with
    something drawn on it: not one flat colour, nor a background with next to nothing on it
    (its commonest colour covers at most 98% of it, and it has more than 16 colours)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", path
        if size is not None:
            assert np.abs(np.subtract(image.size, size)).max() <= 1, (path, image.size, size)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    _, counts = np.unique(pixels, axis=0, return_counts=True)
    background = counts.max() / len(pixels)
    assert len(counts) > 16 and background <= 0.98, (
        f"{path}: {len(counts)} colours, {background:.1%} background"
    )
