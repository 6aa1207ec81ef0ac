"""The analyze stage: every figure of ``piaug.analyze`` whose inputs exist, into ``figures/``,
and the numbers behind them into ``analysis.json``; a figure whose inputs are missing is skipped
with a log line naming them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import logging

from piaug import analyze, checkpoints, configure, layout, plots
from piaug.data import input_pipeline, prepare
from piaug.stages.common import done


def analyze_stage(config, workdir: Path) -> None:
    """Every figure whose inputs exist into ``workdir/figures``, their numbers into
    ``analysis.json``."""
    summary_path = workdir / layout.ANALYSIS_FILE
    if done(summary_path, config, "analyze"):
        return
    figures = workdir / layout.FIGURES
    figures.mkdir(exist_ok=True)
    summary: dict = {}
    skipped: list[str] = []
    prepared = configure.prepare_data(config)
    _sampling_and_mi(config, workdir, figures, summary, skipped)
    _curves(config, workdir, figures, skipped)
    _training_batches(config, workdir, figures, prepared)
    _loss_vs_iie(config, workdir, figures, prepared, summary, skipped)
    _footprints(config, figures, summary)
    layout.write_json(summary_path, summary)
    for s in skipped:
        logging.info("analyze: skipped %s", s)
    logging.info("analyze: figures in %s, numbers in %s", figures, summary_path)


def _sampling_and_mi(config, workdir, figures, summary, skipped) -> None:
    """Fig. 3 (anchor IIE under each weight map) and Fig. 6 (the estimate's MI density)."""
    stats = layout.read_json(workdir / layout.INFO_FILE)
    if stats:
        summary["fig3"] = analyze.fig3_sampling(
            stats,
            config.analyze.gammas,
            float(config.augment.d),
            configure.thresholds(config),
            figures / "sampling_probability.png",
            title=f"{config.data.name}: anchor IIE under each weight map "
            f"({len(stats['per_image'])} images)",
        )
    else:
        skipped.append(f"Fig. 3 (no {layout.INFO_FILE}: run the info stage)")
    result = layout.read_json(workdir / layout.ESTIMATE_FILE)
    if result:
        analyze.fig6_mi_density(result, figures / "mi_density.png")
    else:
        skipped.append(f"Fig. 6 (no {layout.ESTIMATE_FILE}: run the estimate stage)")


def _curves(config, workdir, figures, skipped) -> None:
    """The encoders' loss curves and probe curves from their ``metrics.jsonl``."""
    dirs = layout.encoder_dirs(workdir, config.train.baseline)
    curves = {name: analyze.read_curve(d.parent / layout.METRICS_FILE) for name, d in dirs.items()}
    curves = {name: rows for name, rows in curves.items() if rows}
    if curves:
        plots.loss_curves(curves, figures / "loss_curves.png", title=config.data.name)
    else:
        skipped.append("loss curves (no metrics.jsonl: run pretrain or train)")
    probes, copies = {}, set()
    for name, d in dirs.items():
        rows = analyze.read_rows(d.parent / layout.METRICS_FILE, "probe_mre_mm")
        if rows:
            probes[name] = ([r["step"] for r in rows], [r["probe_mre_mm"] for r in rows])
            copies |= {r["probe_copy_mre_mm"] for r in rows}
    if probes:
        # One probe for every encoder of the run, so one copy line (none if they differ).
        reference = {"template copied": copies.pop()} if len(copies) == 1 else None
        plots.probe_curves(
            probes, figures / "probe_curve.png", title=config.data.name, reference=reference
        )
    else:
        skipped.append("probe curve (no probe in metrics.jsonl: config.eval.every)")


def _training_batches(config, workdir, figures, prepared: prepare.Prepared) -> None:
    """A batch of crops as the baseline's and piaug's trainings draw them."""
    transforms = {"baseline": configure.baseline_anchor_crop(config)}
    if not config.augment.estimated or (workdir / layout.ESTIMATE_FILE).exists():
        transforms["piaug"] = configure.anchor_crop(
            config, estimate_file=workdir / layout.ESTIMATE_FILE
        )
    for name, transform in transforms.items():
        loader = input_pipeline.make_loader(
            prepared.source,
            transform,
            global_batch_size=min(4, len(prepared)),
            seed=int(config.seed),
            process_index=0,
            process_count=1,
        )
        plots.training_batch(next(iter(loader)), figures / f"training_batch_{name}.png")


def _loss_vs_iie(config, workdir, figures, prepared: prepare.Prepared, summary, skipped) -> None:
    """Fig. 2: each trained encoder's per-pixel loss against the pixel's IIE."""
    cfg = config.analyze
    available = layout.trained_encoders(workdir, config.train.baseline)
    if not available:
        skipped.append("Fig. 2 (no checkpoints: run pretrain or train)")
        return
    n = min(int(cfg.num_images), len(prepared))
    examples = [prepared.source[i] for i in range(n)]
    images = np.stack([e["image"] for e in examples])
    iie = np.stack([e["iie"] for e in examples])
    model = configure.model(config)
    per_encoder = {
        name: analyze.pixel_losses(
            model.encoders(),
            checkpoints.restore_encoders(ckpt_dir, model),
            images,
            iie,
            crop_size=int(config.data.crop_size),
            loss=configure.loss(config),
            stride=int(cfg.anchor_stride),
        )
        for name, ckpt_dir in available.items()
    }
    summary["fig2"] = analyze.fig2_loss_vs_iie(
        per_encoder,
        configure.thresholds(config),
        figures / "loss_vs_iie.png",
        title=f"per-pixel loss against IIE ({n} images, anchors every {cfg.anchor_stride} px)",
    )


def _footprints(config, figures, summary) -> None:
    """Fig. 7: the first image's IIE under each footprint of ``analyze.footprints``."""
    first = configure.load_dataset(config)[0]  # (a volume: its middle axial slice drawn)
    footprints = {
        spec: prepare.footprint_of(spec, "config.analyze.footprints")
        for spec in config.analyze.footprints
    }
    summary["fig7"] = analyze.fig7_footprints(first, footprints, figures / "footprints.png")
