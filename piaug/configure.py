"""The config edge: from an ``ml_collections.ConfigDict`` to the plain settings and objects the
library takes, and every check of a config, run before anything is written.

Library code (``piaug.train``, ``piaug.data``, ``piaug.estimate``, ``piaug.analyze``,
``piaug.checkpoints``) never reads a config: it takes plain arguments or the small typed
settings made here (``models.ModelSettings``, ``losses.LossSettings``,
``train.TrainSettings``, ``estimate.EstimateSettings``, ``input_pipeline.AnchorCrop``). Each
settings object checks its own fields; this module adds the ``config.`` prefix to the message.
A new config field is read here (or in the stage of ``piaug.pipeline`` that uses it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from piaug import augment, data, detector, estimate, layout, losses, matching, mixing, models, train
from piaug.data import input_pipeline, prepare
from piaug.errors import UserError, fields_of

STAGES = ("info", "pretrain", "estimate", "train", "pseudo", "detector", "evaluate", "analyze")


def parse_stages(spec: str) -> list[str]:
    """``config.stages`` as a list; UserError for an unknown or no stage."""
    stages = [s.strip() for s in str(spec).split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise UserError(
            f"config.stages={spec!r}: unknown or no stage {unknown}; "
            f"give a comma-separated subset of {', '.join(STAGES)}"
        )
    return stages


def as_dict(config) -> dict:
    """The config as plain JSON values (what ``config.json`` holds)."""
    return json.loads(config.to_json_best_effort())


def _settings(cls, section, prefix: str):
    """``cls`` (a settings dataclass) from the same-named fields of a config section."""
    with fields_of(prefix):
        return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})


def model(config) -> models.ModelSettings:
    """``config.model``; the encoders' number of axes is the grid's (``data.image_size``:
    2 entries for images, 3 for volumes)."""
    cfg = config.model.to_dict() | {"dims": len(config.data.image_size)}
    return _settings(models.ModelSettings, cfg, "config.model.")


def loss(config) -> losses.LossSettings:
    return _settings(losses.LossSettings, config.loss, "config.loss.")


def mixing_settings(config) -> mixing.MixSettings:
    return _settings(mixing.MixSettings, config.mixing, "config.mixing.")


def train_settings(config) -> train.TrainSettings:
    return _settings(train.TrainSettings, config.train, "config.train.")


DETECTOR_INITS = ("random", "baseline", "piaug", "imagenet")
DETECTOR_LABELS = ("pseudo", "true")


def detector_settings(config) -> detector.DetectorSettings:
    return _settings(detector.DetectorSettings, config.detector, "config.detector.")


def detector_train_settings(config) -> train.TrainSettings:
    return _settings(train.TrainSettings, config.detector, "config.detector.")


def detector_augment(config) -> input_pipeline.LandmarkAugment:
    cfg = config.detector
    with fields_of("config.detector."):
        return input_pipeline.LandmarkAugment(
            max_rotation=float(cfg.max_rotation),
            max_scale=float(cfg.max_scale),
            max_shift=float(cfg.max_shift),
            brightness=augment.factor_range(cfg.brightness, "brightness"),
            contrast=augment.factor_range(cfg.contrast, "contrast"),
        )


def detector_inits(config) -> list[str]:
    """``config.detector.inits`` as a list: a tuple, or a comma-separated string (as
    ``--config.detector.inits=random,piaug`` gives)."""
    value = config.detector.inits
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def detector_name(config, init: str) -> str:
    """The folder and results row of the detector from ``init``: ``detector_INIT`` (true
    labels), ``detector_INIT_pseudo_ENCODER`` (pseudo-labels of that encoder; with
    ``eval.templates=K`` > 1, ``detector_INIT_pseudo_ENCODER_templates-K``)."""
    if config.detector.labels == "true":
        return f"detector_{init}"
    count = int(config.eval.get("templates", 1))
    suffix = "" if count == 1 else f"_templates-{count}"
    return f"detector_{init}_pseudo_{config.detector.pseudo_from}{suffix}"


def check_detector(config) -> None:
    """UserError, naming the field, for a ``config.detector`` that cannot run."""
    cfg = config.detector
    detector_settings(config)
    detector_train_settings(config)
    detector_augment(config)
    inits = detector_inits(config)
    bad = [i for i in inits if i not in DETECTOR_INITS]
    if bad or not inits:
        raise UserError(
            f"config.detector.inits={tuple(inits)}: use one or more of {DETECTOR_INITS}"
        )
    if cfg.labels not in DETECTOR_LABELS:
        raise UserError(f"config.detector.labels={cfg.labels!r}: use one of {DETECTOR_LABELS}")
    if cfg.pseudo_from not in ("baseline", "piaug"):
        raise UserError(f"config.detector.pseudo_from={cfg.pseudo_from!r}: use baseline or piaug")
    if int(cfg.images) < 0 or int(cfg.labeled) < 0:
        raise UserError(
            f"config.detector.images={cfg.images}, labeled={cfg.labeled}: both must be >= 0"
        )
    if "imagenet" in inits and not config.model.pretrained:
        raise UserError(
            "config.detector.inits has 'imagenet' but config.model.pretrained is empty: give "
            "the path of a torchvision vgg19 state dict"
        )
    if cfg.encoders and not (Path(cfg.encoders) / layout.CONFIG_FILE).is_file():
        raise UserError(
            f"config.detector.encoders={cfg.encoders!r} is not a piaug run folder (no "
            f"{layout.CONFIG_FILE}): give the --workdir of a run with trained encoders, or ''"
        )


def match_settings(config) -> matching.MatchSettings:
    """How one-shot matching runs (``config.eval``): one object for every caller."""
    fusion, count = config.eval.get("fusion", "weighted"), config.eval.get("templates", 1)
    if fusion not in matching.FUSION:
        raise UserError(f"config.eval.fusion={fusion!r}: use one of {matching.FUSION}")
    if not isinstance(count, int) or count < 1:
        raise UserError(f"config.eval.templates={count!r}: give 1 or more templates")
    from piaug.templates import POLICIES, TEMPLATE_SETS  # (templates reads this module)

    for field, value, allowed in (
        ("template_policy", config.eval.get("template_policy", "salient"), POLICIES),
        ("template_set", config.eval.get("template_set", "cover"), TEMPLATE_SETS),
    ):
        if value not in allowed:
            raise UserError(f"config.eval.{field}={value!r}: use one of {allowed}")
    try:
        return matching.MatchSettings.from_eval(config.eval)
    except ValueError as e:
        raise UserError(f"config.{e}") from None


def estimate_settings(config) -> estimate.EstimateSettings:
    """``config.estimate``, its ``patch_size`` 0 meaning the crop size."""
    cfg = config.estimate.to_dict()
    cfg["patch_size"] = int(cfg["patch_size"]) or int(config.data.crop_size)
    settings = _settings(estimate.EstimateSettings, cfg, "config.estimate.")
    with fields_of("config.estimate."):
        settings.check_size(image_size(config))
    return settings


def image_size(config) -> tuple[int, int]:
    return prepare.check_image_size(config.data.image_size)


def footprint(config) -> np.ndarray:
    return prepare.footprint_of(config.info.footprint)


def thresholds(config) -> tuple[float, float]:
    """``config.info.thresholds`` as ``(t0, t1)``; UserError unless two numbers t0 <= t1."""
    try:
        low, high = (float(t) for t in config.info.thresholds)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not low <= high:
        raise UserError(
            f"config.info.thresholds={config.info.thresholds}: need two numbers t0 <= t1"
        )
    return low, high


def load_dataset(config, split: str | None = None):
    """The dataset named by ``config.data``, its ``split`` (default ``config.data.split``;
    a seeded dataset, the synthetic set, is drawn from ``config.seed``)."""
    cfg = config.data
    spec = data.spec(cfg.name)
    options = {k: v for k, v in cfg.options.to_dict().items() if v is not None}
    if spec.seeded:
        options["seed"] = config.seed
    try:
        return spec.load(cfg.dir or None, split=split or cfg.split, **options)
    except UserError as e:
        hint = ""
        if "unknown options" in str(e):
            hint = (
                f"; config.data.options holds the reader options of the config's dataset: "
                f"start from configs/{cfg.name}.py"
            )
        raise UserError(f"config.data (dataset {cfg.name!r} at {cfg.dir!r}): {e}{hint}") from None
    except ValueError as e:
        raise UserError(f"config.data: {e}") from None


def prepare_data(config, dataset=None, split: str | None = None) -> prepare.Prepared:
    """The prepared (TFDS) copy of ``config.data`` (or its ``split``) at the training size,
    built on first use (by process 0 while the others wait, when there are several)."""
    split = split or config.data.split
    dataset = load_dataset(config, split) if dataset is None else dataset
    return layout.primary_first(
        lambda: prepare.prepare(
            dataset,
            image_size=image_size(config),
            footprint=config.info.footprint,
            cache_dir=config.data.cache_dir or None,
            split=split,
            full_resolution_cache=bool(config.data.cache_original_iie),
        ),
        "prepare",
        others=True,
    )


def anchor_crop(
    config, *, ranges_required: bool = True, estimate_file: str | Path | None = None
) -> input_pipeline.AnchorCrop:
    """The per-example transform of ``config.augment`` and ``config.data.crop_size``.

    The jitter ranges come from ``config.augment.ranges_file`` if set; else, when
    ``config.augment.estimated`` and an ``estimate_file`` is given (the run's ``augment.json``),
    from that; else from ``config.augment.brightness``/``contrast`` for every group. With
    ``ranges_required=False`` a ranges file that does not exist yet (a later stage writes it)
    is not an error; the config's uniform ranges stand in for it.
    """
    cfg = config.augment
    if cfg.anchors not in input_pipeline.ANCHORS:
        raise UserError(
            f"config.augment.anchors={cfg.anchors!r}: choose one of {input_pipeline.ANCHORS}"
        )
    if int(cfg.crop_grid) < 0 or int(cfg.crop_grid) > int(config.data.crop_size):
        raise UserError(
            f"config.augment.crop_grid={cfg.crop_grid}: give 0 (crops anywhere) or a step in "
            f"pixels up to the crop size {config.data.crop_size} (e.g. 32, the coarsest stride)"
        )
    if not (float(cfg.blur) >= 0 and float(cfg.noise) >= 0):
        raise UserError(f"config.augment.blur={cfg.blur}, noise={cfg.noise}: give 0 (none) or more")
    if int(cfg.anchors_per_crop) < 1:
        raise UserError(
            f"config.augment.anchors_per_crop={cfg.anchors_per_crop}: give 1 (the paper's) or "
            "more anchors per crop"
        )
    if int(cfg.crops_per_image) < 1:
        raise UserError(
            f"config.augment.crops_per_image={cfg.crops_per_image}: give 1 (the paper's) or "
            "more crops of each image per step"
        )
    if not float(cfg.max_scale) >= 1.0:
        raise UserError(
            f"config.augment.max_scale={cfg.max_scale}: give 1 (no scaling) or more; the "
            "factor is drawn in [1 / max_scale, max_scale]"
        )
    path = cfg.ranges_file or (estimate_file if cfg.estimated else None)
    if cfg.continuous and not cfg.ranges_file and not cfg.estimated:
        raise UserError(
            "config.augment.continuous=True interpolates estimated ranges: set "
            "config.augment.estimated=True (the estimate stage's ranges) or a ranges_file"
        )
    if path and (ranges_required or Path(path).exists()):
        jitter = input_pipeline.load_jitter(path)
        if cfg.continuous and jitter.centers is None:
            raise UserError(
                f"config.augment.continuous=True needs each group's iie_mean in {path}: "
                "give the augment.json of a piaug estimate"
            )
    else:
        with fields_of("config.augment: "):
            jitter = augment.GroupJitter.uniform(tuple(cfg.brightness), tuple(cfg.contrast))
    return input_pipeline.AnchorCrop(
        crop_size=int(config.data.crop_size),
        anchors=cfg.anchors,
        gamma=float(cfg.gamma),
        d=float(cfg.d),
        thresholds=thresholds(config),
        jitter=jitter,
        adaptive=bool(cfg.adaptive),
        fixed_group=fixed_group(config),
        continuous=bool(cfg.continuous) and jitter.centers is not None,
        max_rotation=float(cfg.max_rotation),
        order=int(cfg.rotation_order),
        max_scale=float(cfg.max_scale),
        crop_grid=int(cfg.crop_grid),
        blur=float(cfg.blur),
        noise=float(cfg.noise),
        anchors_per_crop=int(cfg.anchors_per_crop),
        crops_per_image=int(cfg.crops_per_image),
    )


def fixed_group(config) -> int:
    """The index of ``config.augment.fixed_group`` (low, medium, high)."""
    name = config.augment.fixed_group
    if name not in augment.GROUPS:
        raise UserError(
            f"config.augment.fixed_group={name!r}: use one of {', '.join(augment.GROUPS)}"
        )
    return augment.GROUPS.index(name)


def baseline_anchor_crop(config) -> input_pipeline.AnchorCrop:
    """The crop view of the baseline encoder: ``config.augment`` with uniform anchors and the
    default brightness and contrast ranges for every group (CC2D's own augmentation)."""
    return dataclasses.replace(
        anchor_crop(config, ranges_required=False),
        anchors="uniform",
        jitter=augment.GroupJitter.uniform(),
        adaptive=False,
        continuous=False,
    )


def evaluate_only(stages: Sequence[str]) -> bool:
    """Whether a call's stages only evaluate (``eval.*`` may then differ from the run's)."""
    return set(stages) <= {"evaluate"}


def check(config, stages: Sequence[str] = STAGES) -> None:
    """Raises UserError, naming the field, for any value that ``stages`` could not use:
    called before anything is written, so that a bad config leaves no workdir and trains
    nothing. Reads one example of the dataset (and of the evaluation split, when evaluating),
    not the images."""
    size = image_size(config)
    fp = footprint(config)
    thresholds(config)
    input_pipeline.check_crop(config.data.crop_size, size)
    anchor_crop(config, ranges_required=False)
    model(config)
    loss(config)
    mixing_settings(config)
    settings = train_settings(config)
    match_settings(config)  # upsample, combine, template_sampling, batch_size
    if int(config.eval.template_candidates) < 0:
        raise UserError(
            f"config.eval.template_candidates={config.eval.template_candidates}: give 0 (score "
            "every labelled image) or how many to score"
        )
    estimate_settings(config)
    check_detector(config)
    for spec in config.analyze.footprints:
        prepare.footprint_of(spec, "config.analyze.footprints")
    if int(config.analyze.anchor_stride) < 1 or int(config.analyze.num_images) < 1:
        raise UserError(
            f"config.analyze.anchor_stride={config.analyze.anchor_stride}, num_images="
            f"{config.analyze.num_images}: both must be >= 1"
        )
    if config.model.pretrained and not Path(config.model.pretrained).is_file():
        raise UserError(
            f"config.model.pretrained={config.model.pretrained!r} is not a file: give the path "
            "of a torchvision vgg19 state dict (.pth, .npz or .safetensors), or '' for none"
        )
    if config.train.baseline and not layout.has_checkpoint(Path(config.train.baseline)):
        raise UserError(
            f"config.train.baseline={config.train.baseline!r} holds no checkpoint: give the "
            "checkpoints/ folder of a finished pretrain run, or '' to train one"
        )
    if settings.batch_size % jax.device_count():
        raise UserError(
            f"config.train.batch_size={settings.batch_size} does not split over the "
            f"{jax.device_count()} devices: use a multiple of the device count"
        )
    if "detector" in stages and int(config.detector.batch_size) % jax.device_count():
        raise UserError(
            f"config.detector.batch_size={config.detector.batch_size} does not split over the "
            f"{jax.device_count()} devices: use a multiple of the device count"
        )
    dataset = load_dataset(config)  # datasets are lazy: this reads the annotations
    if len(size) == 3 and {"pseudo", "detector"} & set(stages):
        raise UserError(
            f"config.stages={config.stages!r}: the detector (stages pseudo and detector) is 2-D "
            "only so far, and this config's grid (config.data.image_size) is 3-D: leave pseudo "
            "and detector out; one-shot matching (evaluate, piaug.predict --template) finds "
            "landmarks in volumes"
        )
    if len(size) != getattr(dataset, "dims", 2):
        raise UserError(
            f"config.data.image_size={tuple(size)} has {len(size)} entries but dataset "
            f"{config.data.name!r} holds {getattr(dataset, 'dims', 2)}-D "
            f"{'volumes' if getattr(dataset, 'dims', 2) == 3 else 'images'}: give (D, H, W) "
            "for volumes, (H, W) for images"
        )
    first = dataset[0]  # ... and one image
    if fp.ndim != np.ndim(first["image"]):
        raise UserError(
            f"config.info.footprint={config.info.footprint!r} is {fp.ndim}-D but "
            f"image {first['id']!r} is {np.ndim(first['image'])}-D: use disk or square for "
            "images, ball or cube for volumes"
        )
    trains = "train" in stages or ("pretrain" in stages and not config.train.baseline)
    if trains:
        input_pipeline.check_batch(settings.batch_size, len(dataset), jax.process_count())
    if "evaluate" in stages and config.eval.split != config.data.split:
        try:
            load_dataset(config, config.eval.split)
        except UserError as e:
            raise UserError(
                f"config.eval.split={config.eval.split!r} cannot be evaluated (checked before "
                f"anything trains): {e}. Choose another --config.eval.split, or leave evaluate "
                "out of --config.stages"
            ) from None
