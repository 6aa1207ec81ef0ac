"""The paper's analysis figures from a run's saved artefacts (the ``analyze`` stage).

Each figure is drawn when what it needs exists, and skipped (with a log line naming the
missing file) when not; the numbers behind them go to ``analysis.json``:

* Fig. 2, ``figures/loss_vs_iie.png``: the per-pixel contrastive loss and PSI of each encoder
  against the anchor's IIE, groups marked. Anchors on a grid of ``config.analyze.anchor_stride``
  pixels in the first ``config.analyze.num_images`` training images, each with the crop
  centred on it (clipped inside), unaugmented.
* Fig. 3, ``figures/sampling_probability.png``: for exponential weight maps of each
  ``config.analyze.gammas`` and the piecewise map at ``config.augment.d``, the density of the
  anchors' IIE, from the IIE histogram of ``info_stats.json``; landmark IIE marked.
* Fig. 6, ``figures/mi_density.png``: the density of the template-to-image MI per group, from
  ``augment.json``, targets marked.
* Fig. 7, ``figures/footprints.png``: IIE maps of one training image (original resolution)
  under each of ``config.analyze.footprints``.
* ``figures/loss_curves.png``: the training loss of the baseline and piaug runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from piaug import estimate, info, losses, plots, train
from piaug.data import input_pipeline

_BINS = np.linspace(0.0, 8.0, 33)  # IIE bins (bits) of Fig. 2


def grid_anchors(size: tuple[int, int], stride: int) -> np.ndarray:
    """``(A, 2)`` (row, col) anchors every ``stride`` pixels, offset by half a step."""
    rows = np.arange(stride // 2, size[0], stride)
    cols = np.arange(stride // 2, size[1], stride)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


def centred_crops(image: np.ndarray, anchors: np.ndarray, crop: int):
    """Unaugmented ``crop`` x ``crop`` views containing each anchor, centred where the border
    allows: ``(A, crop, crop)`` float32 in [0, 1] and the anchors' positions in them."""
    crops = estimate.patches(image[None], anchors[None], crop)[0]
    return crops.astype(np.float32) / 255.0, anchors - estimate.patch_corners(
        anchors, crop, image.shape
    )


def pixel_losses(config, variables: dict, images, iie, *, stride: int, chunk: int = 64):
    """Per-anchor loss (sum over scales) and PSI (mean over scales) of an encoder pair, with
    the anchors' IIE: three flat arrays over the anchors of all ``images`` ``(N, H, W)``."""
    net_image, net_crop = train.nets_from_config(config)
    kw = {"window": config.loss.window, "temperature": config.loss.temperature}

    @jax.jit
    def run(variables, image, crops, anchors, crop_anchors):  # parameters: no baked constants
        feats = net_image.apply(variables["image"], image[None])
        crop_feats = net_crop.apply(variables["crop"], crops)
        feats = [jnp.broadcast_to(f, (len(crops), *f.shape[1:])) for f in feats]
        loss, psi = losses.multiscale_info_nce(
            feats, crop_feats, anchors, crop_anchors, clamp=config.loss.clamp, **kw
        )
        return loss.sum(1), psi.mean(1)

    anchors = grid_anchors(images.shape[1:], stride)
    out = {"iie": [], "loss": [], "psi": []}
    for image, m in zip(images, iie, strict=True):
        crops, crop_anchors = centred_crops(image, anchors, int(config.data.crop_size))
        x = image.astype(np.float32) / 255.0
        for start in range(0, len(anchors), chunk):
            part = slice(start, start + chunk)
            n = len(anchors[part])
            pad = chunk - n  # one shape for every call
            args = [
                np.concatenate([a[part], np.repeat(a[:1], pad, 0)])
                for a in (crops, anchors, crop_anchors)
            ]
            loss, psi = run(variables, x, *args)
            out["loss"].append(np.asarray(loss)[:n])
            out["psi"].append(np.asarray(psi)[:n])
        out["iie"].append(m[anchors[:, 0], anchors[:, 1]])
    return {k: np.concatenate(v) for k, v in out.items()}


def binned(
    x: np.ndarray, y: np.ndarray, edges: np.ndarray = _BINS
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` in each bin of ``x`` (NaN where empty) and the counts."""
    index = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
    count = np.bincount(index, minlength=len(edges) - 1)
    total = np.bincount(index, weights=y, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def sampling_weights(centers, gammas, d: float) -> dict[str, np.ndarray]:
    """Fig. 3's weight maps evaluated at IIE ``centers``: label -> weight per bin."""
    out = {}
    for g in gammas:
        label = "uniform (gamma 0)" if g == 0 else f"IIE^{g:g}"
        out[label] = input_pipeline.weights(np.asarray(centers), "exponential", gamma=float(g))
    out[f"1[IIE >= {d:g}]"] = input_pipeline.weights(np.asarray(centers), "piecewise", d=d)
    return out


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _read_losses(path: Path):
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def analyze(config, workdir: Path) -> None:
    """Draws every figure whose inputs exist into ``workdir/figures``; ``analysis.json``."""
    from piaug import pipeline  # the stages module imports this one

    if (workdir / "analysis.json").exists() and not config.force:
        logging.info(
            "analyze: %s exists, skipping (--config.force=True redoes it)",
            workdir / "analysis.json",
        )
        return
    figures = workdir / "figures"
    figures.mkdir(exist_ok=True)
    thresholds = pipeline._thresholds(config)
    summary: dict = {}
    skipped = []

    stats = _read_json(workdir / "info_stats.json")
    if stats:
        edges = np.asarray(stats["iie_histogram"]["bin_edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        density = np.asarray(stats["iie_histogram"]["counts"], np.float64)
        weights = sampling_weights(centers, config.analyze.gammas, float(config.augment.d))
        marks = [p["landmark_iie"] for p in stats["per_image"]]
        plots.sampling_probability(
            centers,
            density,
            weights,
            np.asarray(marks),
            thresholds,
            figures / "sampling_probability.png",
            title=f"{config.data.name}: anchor IIE under each weight map ({len(marks)} images)",
        )
        summary["fig3"] = {
            "bin_centers": centers.round(4).tolist(),
            "probability": {
                k: (density * w / max((density * w).sum(), 1e-12)).round(6).tolist()
                for k, w in weights.items()
            },
        }
    else:
        skipped.append("Fig. 3 (no info_stats.json: run the info stage)")

    estimate = _read_json(workdir / pipeline.ESTIMATE_FILE)
    if estimate:
        groups = estimate["groups"]
        plots.mi_density(
            {k: np.asarray(g["mi"]) for k, g in groups.items()},
            {k: g["target_mi"] for k, g in groups.items()},
            figures / "mi_density.png",
            title=f"MI per group ({estimate['estimator']}, alpha_hat {estimate['alpha']:g}, "
            f"template {estimate['template']['id']})",
        )
    else:
        skipped.append(f"Fig. 6 (no {pipeline.ESTIMATE_FILE}: run the estimate stage)")

    curves = {}
    for name, ckpt_dir in pipeline._encoders(config, workdir).items():
        rows = _read_losses(ckpt_dir.parent / "metrics.jsonl")
        if rows:
            curves[name] = rows
    if curves:
        plots.loss_curves(curves, figures / "loss_curves.png", title=config.data.name)
    else:
        skipped.append("loss curves (no metrics.jsonl: run pretrain or train)")

    available = {
        k: d for k, d in pipeline._encoders(config, workdir).items() if pipeline._has_checkpoint(d)
    }
    if available:
        pool = pipeline.prepare_data(config)
        n = min(int(config.analyze.num_images), len(pool))
        examples = [pool.source[i] for i in range(n)]
        images = np.stack([e["image"] for e in examples])
        iie = np.stack([e["iie"] for e in examples])
        lines, fig2 = {}, {}
        centers = (_BINS[:-1] + _BINS[1:]) / 2
        for name, ckpt_dir in available.items():
            per = pixel_losses(
                config,
                train.restore_params(ckpt_dir, config),
                images,
                iie,
                stride=int(config.analyze.anchor_stride),
            )
            loss, count = binned(per["iie"], per["loss"])
            psi, _ = binned(per["iie"], per["psi"])
            lines[name] = (loss, psi, count)
            groups = np.asarray(info.information_groups(per["iie"], thresholds))
            fig2[name] = {
                "loss": np.where(np.isnan(loss), None, loss.round(5)).tolist(),
                "psi": np.where(np.isnan(psi), None, psi.round(5)).tolist(),
                "count": count.tolist(),
                "group_mean_loss": {
                    g: float(per["loss"][groups == i].mean()) if np.any(groups == i) else None
                    for i, g in enumerate(info.GROUP_NAMES)
                },
            }
        plots.loss_vs_iie(
            centers,
            lines,
            thresholds,
            figures / "loss_vs_iie.png",
            title=f"per-pixel loss against IIE ({n} images, anchors every "
            f"{config.analyze.anchor_stride} px)",
        )
        summary["fig2"] = {"bin_centers": centers.tolist(), "encoders": fig2}
    else:
        skipped.append("Fig. 2 (no checkpoints: run pretrain or train)")

    first = pipeline.load_dataset(config)[0]
    if np.ndim(first["image"]) == 2:
        maps = {}
        for spec in config.analyze.footprints:
            maps[spec] = np.asarray(info.entropy_map(first["image"], pipeline.make_footprint(spec)))
        plots.footprint_maps(
            first["image"],
            maps,
            figures / "footprints.png",
            title=f"{first['id']}: IIE at the original resolution {first['image'].shape}",
        )
        summary["fig7"] = {
            spec: {"mean": float(m.mean()), "max": float(m.max())} for spec, m in maps.items()
        }
    else:
        skipped.append("Fig. 7 (volumes: not drawn)")

    pipeline._write_json(workdir / "analysis.json", summary)
    for s in skipped:
        logging.info("analyze: skipped %s", s)
    logging.info("analyze: figures in %s, numbers in %s", figures, workdir / "analysis.json")
