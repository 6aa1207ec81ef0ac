"""Where prepared datasets (``piaug.data.prepare``) live, and when a prepared copy is reused.

A prepared copy lives in ``cache_dir/<dataset>/<fingerprint>/``. The fingerprint
(``fingerprint_payload``) covers the reader's options and ids, every source file by name and
content (SHA-256, remembered by path, size and modification time in ``digests.json``), the
settings (training size, footprint, split) and ``FORMAT_VERSION``, so a change to any of them
builds a new copy and nothing else ever does; ``why_new`` says, for the log, what changed since
the newest other copy. ``build_lock`` makes two processes that prepare one copy at once build it
once; ``remove_empty`` clears what an interrupted build left. The IIE maps at the original
resolution (``full_iie_folder``) are keyed by the same payload without the size.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from absl import logging

from piaug import layout

FORMAT_VERSION = 1  # bump when the stored features or their computation change
FULL_IIE_DIR = "iie_original_size"  # in cache_dir/<dataset>/: full_iie_folder
DIGESTS_FILE = "digests.json"  # in the cache folder: file digests by path, size and time
FINGERPRINT_FILE = "fingerprint.json"  # beside each prepared copy: what it was built from


def default_cache_dir() -> Path:
    """``$PIAUG_CACHE``, else ``$XDG_CACHE_HOME/piaug``, else ``~/.cache/piaug``."""
    if os.environ.get("PIAUG_CACHE"):
        return Path(os.environ["PIAUG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "piaug"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _digests(paths: list[Path], cache_dir: Path | None) -> list[str]:
    """The SHA-256 of each file, remembered in ``cache_dir/digests.json`` by path, size and
    modification time, so that each file's content is read once while it stays the same."""
    index = Path(cache_dir) / DIGESTS_FILE if cache_dir else None
    known = {}
    if index is not None and index.exists():
        try:
            known = json.loads(index.read_text())
        except (json.JSONDecodeError, OSError):
            known = {}  # a damaged index is rebuilt
    out, added = [], False
    for path in paths:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in known:
            known[key], added = _file_digest(path), True
        out.append(known[key])
    if added and index is not None:
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_name(f"{index.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(index)
    return out


def fingerprint_payload(dataset, settings: dict, cache_dir: Path | None = None) -> dict:
    """What a prepared copy of ``dataset`` depends on: the reader's name, options and ids,
    ``settings``, and every source file by name and content (so a copied or touched dataset
    reuses its prepared copy; a changed file builds a new one)."""
    paths = sorted(Path(p) for p in dataset.source_files)
    files = sorted([p.name, d] for p, d in zip(paths, _digests(paths, cache_dir), strict=True))
    return {
        "format": FORMAT_VERSION,
        "dataset": dataset.name,
        "options": dataset.options,
        "ids": list(dataset.ids),
        "settings": settings,
        "files": files,
    }


def fingerprint(dataset, settings: dict, cache_dir: Path | None = None) -> str:
    """A short hash of ``fingerprint_payload``."""
    return hash_payload(fingerprint_payload(dataset, settings, cache_dir))


def hash_payload(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def why_new(payload: dict, folder: Path) -> str:
    """How ``payload`` differs from the newest other prepared copy's under ``folder`` (the
    dataset's cache folder), for the log; '' when there is none to compare with."""
    others = sorted(
        folder.glob(f"*/{FINGERPRINT_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for path in others:
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        old, new = (
            json.loads(json.dumps(old, default=str)),
            json.loads(json.dumps(payload, default=str)),
        )
        reasons = [
            f"{key} {old.get(key)!r} -> {new.get(key)!r}"
            for key in ("format", "options")
            if old.get(key) != new.get(key)
        ]
        reasons += [
            f"{key} {old['settings'].get(key)!r} -> {value!r}"
            for key, value in new["settings"].items()
            if old.get("settings", {}).get(key) != value
        ]
        if old.get("ids") != new["ids"]:
            reasons.append(f"{len(set(new['ids']) ^ set(old.get('ids', [])))} ids differ")
        before, after = dict(map(tuple, old.get("files", []))), dict(map(tuple, new["files"]))
        changed = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
        if changed:
            reasons.append(f"{len(changed)} source files differ ({', '.join(changed[:3])}...)")
        return f"unlike {path.parent.name}: " + "; ".join(reasons) if reasons else ""
    return ""


def full_iie_folder(dataset, footprint: str, split: str, cache_dir) -> Path:
    """Where ``prepare(..., full_resolution_cache=True)`` keeps the IIE maps of ``dataset`` at
    its original resolution (``data.cache_original_iie``): one ``.npy`` per image, reused by
    every training size, keyed by the same content fingerprint as the prepared copies, without
    the size."""
    payload = fingerprint_payload(dataset, {"footprint": footprint, "split": split}, cache_dir)
    return Path(cache_dir) / dataset.name / FULL_IIE_DIR / full_iie_key(payload)


def full_iie_key(payload: dict) -> str:
    """The key of the original-resolution maps: a prepared copy's payload without the size."""
    settings = {k: v for k, v in payload["settings"].items() if k != "image_size"}
    return hash_payload({**payload, "settings": {**settings, "maps": "original resolution"}})


@contextlib.contextmanager
def build_lock(path: Path, what: Path):
    """An exclusive lock on ``path`` (``flock``): two jobs that prepare the same copy at once
    (two sweeps, two hosts of separate runs on one file system) build it once; the second
    waits, then finds it built. The lock file is removed when the build is done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("waiting for another process that is preparing %s", what)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_empty(folder: Path, stop: Path) -> None:
    """Removes ``folder`` if it holds only empty folders, then each empty parent up to (not
    including) ``stop``; a file anywhere keeps it."""
    folder = Path(folder)
    if folder.is_dir() and layout.holds_no_file(folder):
        shutil.rmtree(folder)
    parent = folder.parent
    while parent != Path(stop) and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
