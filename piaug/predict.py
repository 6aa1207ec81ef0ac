r"""Landmarks of new images with a trained run: ``python -m piaug.predict``.

With the run's detector (``--model`` names one when the run has several)::

    python -m piaug.predict --run=runs/ceph --images=new/ --out=pred/

Or by one-shot matching with the run's encoder from ONE image you annotated yourself (the
one-shot workflow: no training on your labels)::

    python -m piaug.predict --run=runs/ceph --images=new/ --out=pred/ \
        --template=new/case007.png --template-landmarks=case007.csv [--model=piaug]

``--template-landmarks`` is a CSV in the folder format (``image,1_x,1_y,...``, pixels of the
template image; one row, or the row naming the template). Which image to annotate? ::

    python -m piaug.predict --run=runs/ceph --images=new/ --choose-template

runs the run's unsupervised template choice (the salient-point policy, the pipeline's own code
and settings) on the folder and prints the image to annotate.

Several templates (docs/pipeline.md, ``eval.templates``): ::

    python -m piaug.predict --run=runs/ceph --images=new/ --out=pred/ --choose-templates=5

writes ``pred/to_annotate.csv``, the five images to annotate as a set (the pipeline's choice)
with their landmark columns empty. Fill it in, then ::

    python -m piaug.predict --run=runs/ceph --images=new/ --out=pred/ \
        --template-landmarks=pred/to_annotate.csv

matches each of its templates (its ``image`` column: names in ``--images``, or paths) into every
image and fuses the predictions per landmark (``--fusion``, default the run's ``eval.fusion``).

Writes ``OUT/landmarks.csv`` (``image, 1_x, 1_y, ..., K_x, K_y`` in each image's own pixels,
then ``1_conf, ..., K_conf``: the peak similarity of matching, or the detector's heatmap peak)
and ``OUT/overlays/ID.png``. Images of any size are read as 8-bit grayscale; an unreadable
image is reported by name while the others are predicted, and the exit status is then 1.

**Volumes** (a run trained on volumes, docs/volumes.md): ``--images`` is a folder of NIfTI
files and DICOM series folders (or one of them), read through the run's window;
``--template-landmarks`` holds ``image,1_x,1_y,1_z,...`` in the template's voxel indices (or
world millimetres when the run's ``data.options.coordinates`` is ``world``). Besides
``landmarks.csv`` (voxels ``1_x, 1_y, 1_z, ...``) it writes ``landmarks_world.csv`` (millimetres
through each volume's affine), and each overlay shows every landmark's three orthogonal slices.
The detector is 2-D only: a run on volumes predicts by one-shot matching (``--template``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from piaug.errors import UserError


def parse_args(argv=None) -> argparse.Namespace:
    from piaug.matching import FUSION
    from piaug.templates import POLICIES, TEMPLATE_SETS

    parser = argparse.ArgumentParser(
        prog="python -m piaug.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--run", required=True, help="the --workdir of a trained piaug run")
    parser.add_argument("--images", required=True, help="a folder of images, or one image")
    parser.add_argument("--out", help="the output folder (landmarks.csv, overlays/)")
    parser.add_argument(
        "--model",
        help="the detector (detector_...) or, with --template, the encoder (baseline, piaug)",
    )
    parser.add_argument("--template", help="your one annotated image (one-shot matching)")
    parser.add_argument(
        "--template-landmarks",
        help="its landmarks: a CSV in the folder format; without --template, one row per "
        "template, its image column naming it (in --images, or a path)",
    )
    parser.add_argument(
        "--choose-template", action="store_true", help="print the image to annotate, then stop"
    )
    parser.add_argument(
        "--choose-templates",
        type=int,
        metavar="K",
        help="write OUT/to_annotate.csv: the K images to annotate as a set, then stop",
    )
    parser.add_argument(
        "--template-policy",
        choices=POLICIES,
        help="the label-free choice of --choose-template(s) (default: the run's "
        "eval.template_policy; docs/templates.md compares them)",
    )
    parser.add_argument(
        "--template-set",
        choices=TEMPLATE_SETS,
        help="how --choose-templates=K chooses the set (default: the run's eval.template_set)",
    )
    parser.add_argument(
        "--fusion",
        choices=FUSION,
        help="how K templates' predictions fuse (default: the run's eval.fusion)",
    )
    parser.add_argument(
        "--num-landmarks",
        type=int,
        help="columns of to_annotate.csv (default: the run's, from its results.json)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-overlays", action="store_true", help="write landmarks.csv only")
    args = parser.parse_args(argv)
    if args.choose_template:
        return args
    if not args.out:
        parser.error("--out=DIR is required (or --choose-template)")
    if args.choose_templates is not None:
        if args.choose_templates < 1:
            parser.error("--choose-templates must be at least 1")
        return args
    if args.template and not args.template_landmarks:
        parser.error("--template needs --template-landmarks (its landmarks)")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def image_paths(where: str | Path) -> list[Path]:
    """The images of a folder (sorted by id, as the folder reader orders them) or one file."""
    from piaug.data import common

    where = Path(where)
    if where.is_file():
        return [where]
    if not where.is_dir():
        raise UserError(f"--images={where}: no such folder or file")
    found = common.list_images(where)
    if not found:
        raise UserError(
            f"--images={where}: no image ({', '.join(common.IMAGE_EXTENSIONS)}) in the folder"
        )
    return [found[i] for i in common.sort_ids(found)]


def read_template_points(path: str | Path, template: Path, dims: int = 2) -> np.ndarray:
    """The template's ``(L, 2)`` landmarks from a folder-format CSV (volumes: ``(L, 3)``,
    ``dims`` 3): its only row, or the row whose image names ``template``."""
    from piaug.data import common, volumes

    axes = "xy" if dims == 2 else "xyz"
    table = common.LandmarkTable(Path(path), extra=("spacing_mm", "split"), axes=axes)
    rows = table.rows
    if len(rows) > 1:
        names = (template.name, template.stem, volumes.volume_id(template))
        rows = [r for r in rows if r[1] in names]
    if len(rows) != 1:
        raise UserError(
            f"--template-landmarks={path}: {len(table.rows)} rows and none (or several) for "
            f"{template.name}; give one row, or one whose image is {template.name}"
        )
    return rows[0][2]


def read_templates(
    path: str | Path, images: str | Path, dims: int = 2
) -> list[tuple[Path, np.ndarray]]:
    """The templates of a folder-format CSV with one row per template (``to_annotate.csv``
    filled in): each row's image (a name in the ``images`` folder, or a path, absolute or
    beside the CSV) and its ``(L, dims)`` landmarks."""
    from piaug.data import common, volumes

    path = Path(path)
    table = common.LandmarkTable(
        path, extra=("spacing_mm", "split"), axes="xy" if dims == 2 else "xyz", allow_blank=True
    )
    folder = Path(images) if Path(images).is_dir() else Path(images).parent
    listed = volume_paths(folder) if dims == 3 else image_paths(folder)
    by_name = {}
    for found in listed:
        for name in (found.name, found.stem, volumes.volume_id(found)):
            by_name.setdefault(name, found)
    out = []
    for line, name, points, _ in table.rows:
        where = by_name.get(name)
        for candidate in (Path(name), path.parent / name):
            if where is None and candidate.exists():
                where = candidate
        if where is None:
            raise UserError(
                f"{path}, line {line}: template {name!r} is neither an image of {folder} nor "
                "a file; name one of them, or give its path"
            )
        if not np.isfinite(points).all():
            raise UserError(f"{path}, line {line}: {name} has empty landmark columns: fill them in")
        out.append((where, points))
    if not out:
        raise UserError(f"{path}: no template row; one row per annotated template")
    return out


def _num_landmarks(run: Path, given: int | None) -> int:
    """The run's number of landmarks (from its results.json), or ``given``."""
    from piaug import layout

    if given:
        return int(given)
    results = layout.read_json(Path(run) / layout.RESULTS_FILE) or {}
    for entry in results.values():
        if isinstance(entry, dict) and "per_landmark_mre_mm" in entry:
            return len(entry["per_landmark_mre_mm"])
    raise UserError(
        f"--run={run}: no results.json to read the number of landmarks from; give --num-landmarks=L"
    )


def _window(config: dict):
    """Images of more than 8 bits and DICOM files: the run's own window (its data.options;
    a run on the synthetic volumes: their CT window, ``synthetic3d.WINDOW_HU``)."""
    from piaug.data import common, synthetic3d

    data = config.get("data", {})
    if data.get("name") == synthetic3d.NAME:
        return common.Window("fixed", limits=synthetic3d.WINDOW_HU)
    return common.Window.of(data.get("options", {}))


def volume_paths(where: str | Path) -> list[Path]:
    """The volumes of a folder (NIfTI files and DICOM series folders, sorted by id), or one
    NIfTI file, or one DICOM series folder."""
    from piaug.data import common, volumes

    where = Path(where)
    if where.is_file():
        if not volumes.is_nifti(where):
            raise UserError(
                f"--images={where}: not a NIfTI file (.nii, .nii.gz); this run was trained on "
                "volumes: give NIfTI files or DICOM series folders"
            )
        return [where]
    if not where.is_dir():
        raise UserError(f"--images={where}: no such folder or file")
    found = volumes.list_volumes(where)
    if not found and volumes.dicom_files(where):  # the folder is one DICOM series
        return [where]
    if not found:
        raise UserError(
            f"--images={where}: no volume (NIfTI file or DICOM series folder) in the folder"
        )
    return [found[k] for k in common.sort_ids(found)]


def _read(paths: list[Path], window, dims: int = 2):
    """The images (volumes: ``dims`` 3, uint8 ``(D, H, W)``) that decode, those of more than
    8 bits, DICOM files and series through ``window``; and a line per one that does not."""
    from piaug.data import common, volumes

    read = volumes.read_volume if dims == 3 else common.read_image
    good, failed = [], []
    for path in tqdm(paths, desc="predict: reading", unit="img", leave=False):
        try:
            good.append((path, read(path, window)))
        except UserError as e:
            failed.append(f"{path.name}: {e}")
    return good, failed


def choose(args) -> None:
    """Prints the image of ``--images`` that the run's template policy would annotate (the
    pipeline's choice on the same images: ``piaug.templates``)."""
    from piaug import api

    encoder = api.load_encoder(args.run, args.model)
    dims = len(encoder.image_size)
    paths = volume_paths(args.images) if dims == 3 else image_paths(args.images)
    good, failed = _read(paths, _window(encoder.config), dims)
    if len(good) < 2:
        raise UserError(f"--images={args.images}: the choice needs at least two readable images")
    index, scores = encoder.choose_template(
        [image for _, image in good], batch_size=args.batch_size, policy=args.template_policy
    )
    for line in failed:
        print(f"unreadable: {line}", file=sys.stderr)
    scored = int(np.isfinite(scores).sum())
    print(
        f"annotate {good[index][0].name} (score {scores[index]:.4f}, {scored} of {len(good)} "
        "images scored)"
    )


def choose_set(args) -> None:
    """Writes ``OUT/to_annotate.csv``: the ``--choose-templates`` images of ``--images`` to
    annotate as a set, their landmark columns empty (never over an existing file)."""
    from piaug import api
    from piaug.data import landmarks

    out = Path(args.out) / "to_annotate.csv"
    if out.exists():
        raise UserError(f"{out} exists (annotations?): move it, or give another --out")
    encoder = api.load_encoder(args.run, args.model)
    dims = len(encoder.image_size)
    count = _num_landmarks(args.run, args.num_landmarks)
    paths = volume_paths(args.images) if dims == 3 else image_paths(args.images)
    good, failed = _read(paths, _window(encoder.config), dims)
    if len(good) <= args.choose_templates:
        raise UserError(
            f"--images={args.images}: {len(good)} readable images for "
            f"--choose-templates={args.choose_templates}; give more images or a smaller K"
        )
    indices, scores = encoder.choose_templates(
        [image for _, image in good],
        args.choose_templates,
        batch_size=args.batch_size,
        policy=args.template_policy,
        rule=args.template_set,
    )
    for line in failed:
        print(f"unreadable: {line}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:  # the landmark columns empty, to fill in
        rows = csv.writer(f)
        rows.writerow(["image", *landmarks.columns(count, dims)])
        rows.writerows([good[i][0].name] + [""] * (count * dims) for i in indices)
    names = ", ".join(good[i][0].name for i in indices)
    print(f"annotate {names}: fill in {out}, then --template-landmarks={out}")


def predict(args) -> int:
    """Writes the landmarks of ``--images``; returns the exit status (1 if any failed)."""
    from piaug import api, plots
    from piaug.data import common, landmarks, volumes

    matching_ = bool(args.template_landmarks)
    model = (api.load_encoder if matching_ else api.load_detector)(args.run, args.model)
    dims = len(model.image_size)
    window = _window(model.config)
    paths = volume_paths(args.images) if dims == 3 else image_paths(args.images)
    good, failed = _read(paths, window, dims)
    # volumes: each file's header once (spacing for the overlays, affine for millimetres)
    headers = {path: volumes.read_header(path) for path, _ in good} if dims == 3 else {}
    if matching_:
        if args.template:
            template_path = Path(args.template)
            given = [
                (template_path, read_template_points(args.template_landmarks, template_path, dims))
            ]
        else:
            given = read_templates(args.template_landmarks, args.images, dims)
        read = volumes.read_volume if dims == 3 else common.read_image
        coordinates = model.config.get("data", {}).get("options", {}).get("coordinates", "voxel")
        template, template_points = [], []
        for where, points in given:
            template.append(read(where, window))
            if dims == 3 and coordinates == "world":  # the run's convention for landmark files
                points = volumes.to_voxels(points, volumes.read_header(where).affine)
            template_points.append(points)
        if len(template) == 1:
            template, template_points = template[0], template_points[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names, points, confidence = [], [], []
    bar = tqdm(total=len(good), desc=f"predict: {model.name}", unit="img")
    for start in range(0, len(good), args.batch_size):
        chunk = good[start : start + args.batch_size]
        images = [image for _, image in chunk]
        if matching_:
            p, c = model.landmarks(
                images, template, template_points, batch_size=args.batch_size, fusion=args.fusion
            )
        else:
            p, c = model.landmarks(images, batch_size=args.batch_size)
        names += [path.name for path, _ in chunk]
        points.append(p)
        confidence.append(c)
        if not args.no_overlays:
            (out / "overlays").mkdir(exist_ok=True)
            for (path, image), q in zip(chunk, p, strict=True):
                spacing = headers[path].spacing if dims == 3 else None
                stem = volumes.volume_id(path) if dims == 3 else path.stem
                plots.landmarks(
                    image, q, out / "overlays" / f"{stem}.png", title=path.name, spacing=spacing
                )
        bar.update(len(chunk))
    bar.close()
    if good:
        points, confidence = np.concatenate(points), np.concatenate(confidence)
        files = {"landmarks.csv": points}
        if dims == 3:  # the same points in world millimetres, through each file's affine
            files["landmarks_world.csv"] = [
                volumes.to_world(p, headers[path].affine)
                for (path, _), p in zip(good, points, strict=True)
            ]
        for file, rows in files.items():
            landmarks.write_csv(
                out / file,
                [({"image": n}, p) for n, p in zip(names, rows, strict=True)],
                decimals=2,
                confidence=confidence,
            )
            print(f"predict: {len(good)} images with {model.name} -> {out / file}")
    for line in failed:
        print(f"unreadable: {line}", file=sys.stderr)
    if failed:
        print(f"predict: {len(failed)} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.choose_template:
            choose(args)
            return 0
        if args.choose_templates is not None:
            choose_set(args)
            return 0
        return predict(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
