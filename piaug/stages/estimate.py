"""The estimate stage: the augmentation ranges of each information group (``piaug.estimate``,
Eq. 10) with the baseline encoder and the run's template (chosen once, ``template.json``), into
``augment.json``. Every process computes, process 0 writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from absl import logging

from piaug import checkpoints, configure, estimate, layout, matching
from piaug.errors import UserError
from piaug.stages.common import done
from piaug.templates import ImagePool, choose_template


def estimate_stage(config, workdir: Path) -> None:
    """The augmentation ranges of each information group (Eq. 10) with the baseline encoder,
    into ``workdir/augment.json``."""
    path = workdir / layout.ESTIMATE_FILE
    if done(path, config, "estimate"):
        return
    ckpt_dir = layout.encoder_dirs(workdir, config.train.baseline)["baseline"]
    apply = checkpoints.image_encoder(ckpt_dir, configure.model(config))
    pool = ImagePool(config)
    match = configure.match_settings(config)
    features = matching.encode(apply, pool.images, batch_size=match.batch_size)
    index, chosen = choose_template(config, workdir, pool, lambda: features, ckpt_dir)
    result = estimate.estimate(
        features,
        pool.images,
        pool.examples[index]["iie"],
        index,
        thresholds=configure.thresholds(config),
        match=match,
        seed=int(config.seed),
        **dataclasses.asdict(configure.estimate_settings(config)),
    )
    result["template"] = chosen
    result["encoder"] = str(ckpt_dir)
    result["num_images"] = len(pool.ids)
    _log(result, len(pool.ids))
    if "medium" not in result["groups"]:
        raise UserError(
            f"estimate: template {chosen['id']!r} has no medium-information pixel far enough "
            "from the border, so the medium ranges (which the low group reuses) cannot be "
            "estimated: check config.info.thresholds against info_stats.json"
        )
    if jax.process_index() == 0:
        layout.write_json(path, result)


def _log(result: dict, num_images: int) -> None:
    lines = [
        f"{name:<7} target MI {g['target_mi']:.3f} (mean {g['mi_mean']:.3f}), brightness "
        f"[{g['brightness'][0]:.3f}, {g['brightness'][1]:.3f}], contrast "
        f"[{g['contrast'][0]:.3f}, {g['contrast'][1]:.3f}], {g['num_points']} points"
        for name, g in result["groups"].items()
    ]
    timing = result["timing_s"]
    logging.info(
        "estimate: %d images, %.1f s (match %.1f s, MI %.1f s, search %.1f s)\n%s",
        num_images,
        timing["total"],
        timing["match"],
        timing["target_mi"],
        timing["search"],
        "\n".join(lines),
    )
