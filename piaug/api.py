"""Loading trained models from Python: ``piaug.load_encoder`` and ``piaug.load_detector``.

Both take a run folder (the ``--workdir`` of ``piaug.main``) or one of its checkpoint folders
and read everything else from the run's ``config.json`` (the model's size, the training grid,
the matching and decoding settings), so no ``configs/`` file is imported::

    import piaug

    encoder = piaug.load_encoder("runs/ceph")  # the baseline; name="piaug" for piaug's
    points, confidence = encoder.landmarks(images, template, template_points)
    index, scores = encoder.choose_template(images)  # which image to annotate
    indices, scores = encoder.choose_templates(images, 5)  # or which five
    points, confidence = encoder.landmarks(images, [t1, t2, t3], [p1, p2, p3])  # K templates

    detector = piaug.load_detector("runs/ceph")  # the run's detector (name= when several)
    points, confidence = detector.landmarks(images)

``images`` are 2-D uint8 arrays of any size (grayscale); they are resized to the run's grid,
and the landmarks come back as ``(N, L, 2)`` (x, y) in each image's own pixels, with a
confidence per landmark: the peak of the combined similarity map for one-shot matching, the
heatmap's peak probability for a detector. ``encoder.features(grid_images)`` gives the five
embedding maps of images already at the grid. Matching runs with the run's own settings
(``encoder.settings``, a ``piaug.matching.MatchSettings`` built from its ``config.json``), and
``encoder.choose_template`` with the run's template policy (``piaug.templates``): the same code
paths as the pipeline's.

A run on volumes (its grid has three entries, docs/volumes.md) takes ``(D, H, W)`` uint8
volumes and gives ``(N, L, 3)`` (x, y, z) voxels of each; its template points are ``(L, 3)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from piaug import layout
from piaug.errors import UserError


def _run_of(path: Path) -> Path | None:
    """The run folder that holds ``path`` (itself or up to three levels above it)."""
    for candidate in [path, *list(path.parents)[:3]]:
        if (candidate / layout.CONFIG_FILE).is_file():
            return candidate
    return None


def _locate(path, kind: str, name: str | None) -> tuple[Path, dict, str, Path]:
    """``(run, config, name, checkpoint folder)`` of the ``kind`` (encoder | detector) that
    ``path`` and ``name`` designate; UserError saying what the run holds otherwise."""
    path = Path(path)
    run = _run_of(path)
    if run is None:
        raise UserError(
            f"{path}: neither a piaug run folder (no {layout.CONFIG_FILE}) nor a checkpoint "
            "folder inside one; give the --workdir of a run"
        )
    config = layout.read_json(run / layout.CONFIG_FILE)
    if kind == "detector" and len(config.get("data", {}).get("image_size", ())) == 3:
        raise UserError(
            f"{run} was trained on volumes: the detector (CC2D's second stage) is 2-D only so "
            "far; find landmarks by one-shot matching with the run's encoder instead "
            "(load_encoder, or piaug.predict --template=VOLUME --template-landmarks=CSV)"
        )
    if kind == "encoder":
        found = layout.trained_encoders(run, config.get("train", {}).get("baseline", ""))
    else:
        found = layout.trained_detectors(run)
    if path != run:  # a checkpoint folder: the model it belongs to
        named = [k for k, d in found.items() if Path(d).resolve() == path.resolve()]
        if not named:
            raise UserError(f"{path}: not the checkpoint folder of any {kind} of run {run}")
        name = named[0]
    if name is None:
        if kind == "encoder":
            name = "baseline"
        elif len(found) == 1:
            name = next(iter(found))
        else:
            raise UserError(
                f"{run} holds {len(found)} detectors ({', '.join(found) or 'none'}): "
                "name one (name=... or --model=...)"
            )
    if name not in found:
        raise UserError(
            f"{run} has no trained {kind} {name!r}; it has {', '.join(found) or 'none'}"
        )
    return run, config, name, Path(found[name])


def _grid(images: Sequence[np.ndarray], size) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """The images resized to the grid ``size`` (uint8 ``(N, H, W)``; volumes ``(N, D, H, W)``
    for a 3-entry grid) and their own shapes."""
    from piaug.data import prepare

    shapes, out = [], []
    what = "2-D uint8 array (grayscale)" if len(size) == 2 else "3-D uint8 array (D, H, W)"
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != len(size) or image.dtype != np.uint8:
            raise UserError(
                f"image {i}: expected a {what} for this run's {len(size)}-D grid, got "
                f"{image.dtype} {image.shape}"
            )
        shapes.append(image.shape)
        out.append(prepare.resize_image(image, size))
    return np.stack(out), shapes


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A run's full-image encoder (``load_encoder``)."""

    name: str
    checkpoint: Path
    image_size: tuple[int, int]
    config: dict
    apply: Callable  # (B, H, W) float32 in [0, 1] at image_size -> five maps
    settings: object  # piaug.matching.MatchSettings: the run's eval settings

    def features(self, images: np.ndarray, *, batch_size: int = 8) -> list[np.ndarray]:
        """The five ``(N, h, w, E)`` maps of ``images`` ``(N, H, W)`` uint8 at the grid."""
        from piaug import matching

        return matching.encode(self.apply, np.asarray(images), batch_size=batch_size)

    def landmarks(
        self,
        images: Sequence[np.ndarray],
        template,
        template_points,
        *,
        batch_size: int = 8,
        fusion: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One-shot matching: the landmarks ``template_points`` ``(L, 2)`` (x, y in the
        ``template`` image's pixels) found in each image, ``(N, L, 2)`` in its own pixels,
        and their confidence ``(N, L)``. Volumes: ``(L, 3)`` (x, y, z voxels) and
        ``(N, L, 3)``.

        Several templates: ``template`` a list of K images (or a ``(K, ...)`` array) and
        ``template_points`` ``(K, L, 2)``; each is matched into every image and the K
        predictions fused per landmark by ``fusion`` (``piaug.matching.fuse``; default the
        run's ``eval.fusion``), the confidence fused likewise."""
        from piaug import evaluate, matching
        from piaug.data import prepare

        size = self.image_size
        many = isinstance(template, list | tuple) or np.asarray(template).ndim == len(size) + 1
        templates_ = list(template) if many else [template]
        points = np.asarray(template_points, np.float64)
        points = points.reshape(len(templates_), -1, len(size))
        grid_templates, shapes_ = _grid(templates_, size)
        cells = np.stack(
            [
                matching.template_cells(prepare.resize_points(p, shape, size), size)
                for p, shape in zip(points, shapes_, strict=True)
            ]
        )
        grid, shapes = _grid(images, size)
        found, scores = matching.predict_many(
            self.apply,
            grid_templates,
            cells,
            grid,
            size=size,
            settings=dataclasses.replace(self.settings, batch_size=batch_size),
            fusion=fusion or self.config.get("eval", {}).get("fusion", "weighted"),
            with_scores=True,
        )
        return evaluate.to_original(found, shapes, size), scores

    def choose_template(
        self, images: Sequence[np.ndarray], *, batch_size: int = 8, policy: str | None = None
    ) -> tuple[int, np.ndarray]:
        """The image of ``images`` (uint8 of the run's dimension, any size) to annotate: the
        run's label-free template policy (``piaug.templates.choose``, the pipeline's choice),
        or ``policy`` (one of ``piaug.templates.POLICIES``). Returns its index and every
        image's score (higher: preferred; -inf for those not scored)."""
        index, scores, _ = self._scored(images, batch_size, policy)
        return index, scores

    def choose_templates(
        self,
        images: Sequence[np.ndarray],
        count: int,
        *,
        batch_size: int = 8,
        policy: str | None = None,
        rule: str | None = None,
    ) -> tuple[list[int], np.ndarray]:
        """The ``count`` images of ``images`` to annotate as a set (``choose_template``'s,
        then ``piaug.templates.choose_set`` by the run's ``eval.template_set`` or ``rule``:
        the pipeline's ``eval.templates`` choice), and every image's score."""
        from piaug import templates

        index, scores, per_image = self._scored(images, batch_size, policy)
        rule = rule or self.config.get("eval", {}).get("template_set", "cover")
        return templates.choose_set(scores, per_image, count, first=index, rule=rule), scores

    def _scored(self, images, batch_size: int, policy: str | None = None):
        from piaug import info, templates
        from piaug.data import prepare

        if len(images) < 2:
            raise UserError("the template choice needs at least two images")
        size = self.image_size
        grid, _ = _grid(images, size)
        footprint = prepare.footprint_of(self.config["info"]["footprint"])
        iie = [
            prepare.resize_bilinear(np.asarray(info.entropy_map(image[None], footprint))[0], size)
            for image in images
        ]
        index, scores, _, per_image = templates.choose(
            self.features(grid, batch_size=batch_size),
            iie,
            np.ones(len(images), bool),
            size=size,
            policy=templates.TemplatePolicy.from_eval(
                dict(self.config["eval"], **({"template_policy": policy} if policy else {}))
            ),
            settings=dataclasses.replace(self.settings, batch_size=batch_size),
            images=grid,
            per_image=True,
        )
        return index, scores, per_image


@dataclasses.dataclass(frozen=True)
class Detector:
    """A run's landmark detector (``load_detector``)."""

    name: str
    checkpoint: Path
    image_size: tuple[int, int]
    config: dict
    net: object  # piaug.detector.Detector
    variables: dict
    settings: object  # piaug.detector.DetectorSettings

    def landmarks(
        self, images: Sequence[np.ndarray], *, batch_size: int = 8
    ) -> tuple[np.ndarray, np.ndarray]:
        """The landmarks of each image, ``(N, L, 2)`` (x, y in its own pixels), and their
        confidence ``(N, L)`` (the heatmap's peak probability)."""
        from piaug import detector

        grid, shapes = _grid(images, self.image_size)
        found, confidence = detector.predict(
            self.net, self.variables, grid, settings=self.settings, batch_size=batch_size
        )
        from piaug import evaluate

        return evaluate.to_original(found, shapes, self.image_size), confidence


def _image_size(config: dict) -> tuple[int, int]:
    return tuple(int(s) for s in config["data"]["image_size"])


def load_encoder(path, name: str | None = None) -> Encoder:
    """The full-image encoder ``name`` (``baseline`` or ``piaug``; default the baseline) of
    the run in ``path`` (a run folder, or the checkpoint folder of one of its encoders)."""
    from piaug import checkpoints, matching

    run, config, name, ckpt = _locate(path, "encoder", name)
    model = checkpoints.model_settings(config)
    apply = checkpoints.image_encoder(ckpt, model)
    settings = matching.MatchSettings.from_eval(config.get("eval", {}))
    return Encoder(name, ckpt, _image_size(config), config, apply, settings)


def load_detector(path, name: str | None = None) -> Detector:
    """The detector ``name`` (``detector_random``, ...; default the run's only one) of the run
    in ``path`` (a run folder, or a detector's checkpoint folder)."""
    from piaug import checkpoints, detector

    run, config, name, ckpt = _locate(path, "detector", name)
    model = checkpoints.model_settings(config)
    num_landmarks = detector.saved_num_landmarks(ckpt)
    import jax.numpy as jnp

    net = detector.Detector(int(num_landmarks), model.width, jnp.dtype(model.dtype), model.norm)
    size = _image_size(config)
    saved = config.get("detector", {})
    names = [f.name for f in dataclasses.fields(detector.DetectorSettings)]
    settings = detector.DetectorSettings(**{k: saved[k] for k in names if k in saved})
    variables = detector.restore(ckpt, net, size)
    return Detector(name, ckpt, size, config, net, variables, settings)
