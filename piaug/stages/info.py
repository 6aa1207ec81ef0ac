"""The info stage: the prepared dataset (``piaug.data.prepare``: IIE maps at the original
resolution, resized with the images to the training grid), ``info_stats.json``
(``piaug.analyze.info_statistics``) and ``figures/`` (image | IIE | groups)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import logging
from tqdm import tqdm

from piaug import analyze, configure, evaluate, info, layout, plots, tb, volume_plots
from piaug.data import prepare
from piaug.stages.common import done


def info_stage(config, workdir: Path, prepared: prepare.Prepared | None = None) -> None:
    """Prepares the dataset; statistics and figures of its IIE maps."""
    stats_path = workdir / layout.INFO_FILE
    if done(stats_path, config, "info"):
        return
    prepared = configure.prepare_data(config) if prepared is None else prepared
    thresholds = configure.thresholds(config)
    figures = workdir / layout.FIGURES
    figures.mkdir(exist_ok=True)
    stats, landmark_iie = _statistics(config, prepared, thresholds)
    _panels(config, workdir, prepared, thresholds)
    plots.iie_histogram(
        analyze.HIST_EDGES,
        np.asarray(stats["iie_histogram"]["counts"]),
        thresholds,
        landmark_iie,
        figures / "iie_histogram.png",
        title=f"{config.data.name}: IIE {config.info.footprint}, {stats['num_images']} images",
    )
    layout.write_json(stats_path, stats)  # last: its presence marks the stage as done
    fractions = ", ".join(f"{k} {v:.1%}" for k, v in stats["group_fraction"].items())
    logging.info("info: %d images, pixels per group: %s", stats["num_images"], fractions)
    logging.info("info: wrote %s and %s", stats_path, figures)


def _statistics(config, prepared: prepare.Prepared, thresholds) -> tuple[dict, np.ndarray]:
    """``info_stats.json``'s content and the landmarks' IIE values."""
    examples = (
        prepared.source[i] for i in tqdm(range(len(prepared)), desc="info: statistics", unit="img")
    )
    computed, landmark_iie = analyze.info_statistics(examples, thresholds)
    stats = {
        "dataset": config.data.name,
        "prepared": str(prepared.path),
        "num_images": computed["num_images"],
        "footprint": config.info.footprint,
        "grid": list(config.data.image_size),
        "units": "bits",
        "thresholds": list(thresholds),
        "iie_histogram": computed["iie_histogram"],
        "group_fraction": computed["group_fraction"],
        "landmark_iie": computed["landmark_iie"],
        "report": prepared.metadata.get("report", []),
        "per_image": computed["per_image"],
    }
    return stats, landmark_iie


def _panels(config, workdir: Path, prepared: prepare.Prepared, thresholds) -> None:
    """The first ``info.num_figures`` images as image | IIE | groups, in ``figures/`` and
    TensorBoard."""
    figures = workdir / layout.FIGURES
    board = tb.Writer(workdir / layout.TENSORBOARD / "info")
    for i in range(min(int(config.info.num_figures), len(prepared))):
        ex = prepared.source[i]
        name = ex["id"].decode()
        groups = np.asarray(info.information_groups(ex["iie"], thresholds))
        plots.info_panel(
            ex["image"],
            ex["iie"],
            groups,
            ex["landmarks"],
            thresholds,
            figures / f"info_{name}.png",
            title=f"{name}  IIE {config.info.footprint}",
            original_size=ex["original_size"],
            spacing=evaluate.grid_spacing(ex["spacing"], ex["original_size"], ex["image"].shape)[0],
        )
        image, iie = ex["image"], ex["iie"]
        if image.ndim == 3:  # TensorBoard: a volume's middle axial slice
            image, iie, groups = (volume_plots.middle(a) for a in (image, iie, groups))
        panel = tb.side_by_side(tb.rgb(image), tb.colour_map(iie), tb.colour_map(groups, 0, 2))
        board.image(f"info/image_iie_groups/{name}", panel, 0)
    board.close()
