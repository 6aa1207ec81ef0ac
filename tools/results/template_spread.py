r"""How much the one-shot result depends on the template: a run's encoder (grid protocol, its
images, as ``evaluate``) matched from every image of the split in turn as the template, into
the other images; each template's MRE, and where the policy's own choice (the run's
``results.json``) falls among them. Labels choose nothing here: they only score each template.

python -m tools.results.template_spread --out=NAME RUN[:ENCODER][=RESULTS] ...

``ENCODER`` is ``baseline`` (default) or ``piaug``; each run needs its ``results.json`` (the
template it evaluated from, whose MRE is checked against it; ``=RESULTS`` names another
results file of the run, a name or a glob, e.g. the evaluation from the policy's template
when the run was given another; every template is matched with that file's evaluation
settings) and its data where its ``config.json`` says.

``--reuse=FILE[,FILE]`` matches nothing: it summarises each run's per-template MREs from the
earlier outputs of this script again against the template of its results file, e.g. after
the run was evaluated from another template.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from scipy import stats

from piaug import checkpoints, configure, layout, matching
from piaug.templates import ImagePool
from tools.results.collect_runs import one_file, run_and_encoder, with_defaults
from tools.results.landmark_errors import cli, grid_truth


def spread(mre: np.ndarray, ids: list[str], chosen: str) -> dict:
    """The summary of every template's MRE ``(T,)``: its quantiles, the best and worst, and the
    chosen template's MRE and rank (1: the best)."""
    order = np.argsort(mre)
    rank = int(np.where(np.asarray(ids)[order] == chosen)[0][0]) + 1
    return {
        "templates": len(ids),
        "chosen": chosen,
        "chosen_mre_mm": float(mre[ids.index(chosen)]),
        "chosen_rank": rank,
        "best": {"id": ids[order[0]], "mre_mm": float(mre[order[0]])},
        "worst": {"id": ids[order[-1]], "mre_mm": float(mre[order[-1]])},
        "quantiles_mm": {str(q): float(np.quantile(mre, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        "mean_mm": float(mre.mean()),
        "mre_mm": {i: float(m) for i, m in zip(ids, mre, strict=True)},
    }


def chosen_entry(run: Path, encoder: str, results: str = "") -> dict:
    """``encoder``'s entry in ``run``'s results file (``results``: a name or a glob naming one
    file, e.g. ``results.template-075*.json`` for an evaluation with another template)."""
    path = one_file(run, results or layout.RESULTS_FILE)
    if path is None:
        raise SystemExit(f"{run}: no {results or layout.RESULTS_FILE}")
    return layout.read_json(path)[encoder]


def encoded(run: Path, encoder: str) -> tuple[ConfigDict, ImagePool, list]:
    """``run``'s config (with the fields it predates at their defaults), its split's images and
    ``encoder``'s five feature maps of them, on the device once (every template reads them)."""
    config = ConfigDict(with_defaults(layout.read_json(run / layout.CONFIG_FILE)))
    pool = ImagePool(config)
    ckpt = layout.trained_encoders(run, config.train.baseline)[encoder]
    apply = checkpoints.image_encoder(ckpt, configure.model(config))
    maps = matching.encode(apply, pool.images, batch_size=config.eval.batch_size)
    return config, pool, [jnp.asarray(f) for f in maps]


def checked(run: Path, mre: np.ndarray, ids: list[str], entry: dict) -> dict:
    """``spread`` against the template of ``entry`` (the run's results file), whose MRE there
    must be the one found here."""
    chosen = entry["template"]["id"]
    if not np.isclose(mre[ids.index(chosen)], entry["mre_mm"], atol=1e-3):
        raise SystemExit(
            f"{run}: MRE from {chosen} {mre[ids.index(chosen)]:.4f} != the results file's "
            f"{entry['mre_mm']}"
        )
    return spread(mre, ids, chosen)


def templates(run: Path, encoder: str, results: str = "") -> dict:
    """Every template's MRE into the other images of ``run``'s split, for ``encoder``."""
    entry = chosen_entry(run, encoder, results)
    config, pool, features = encoded(run, encoder)
    # an evaluation under other settings than the run's records them: match as it did
    settings = matching.MatchSettings.from_eval({**config.eval.to_dict(), **entry.get("eval", {})})
    size = configure.image_size(config)
    spacing, truth = grid_truth(pool.examples, size)
    mre = np.zeros(len(pool.ids))
    for t, example in enumerate(pool.examples):
        vectors = matching.template_vectors(
            [f[t] for f in features],
            matching.template_cells(example["landmarks"], size),
            strides=settings.strides,
            sampling=settings.sampling,
        )
        found = matching.match_all(features, vectors, size=size, settings=settings)
        offset = (found[..., ::-1] - truth) * spacing[:, None, :]
        mre[t] = np.delete(np.linalg.norm(offset, axis=-1), t, axis=0).mean()
    return checked(run, mre, list(pool.ids), entry)


@functools.cache
def _entries(path: str) -> dict[tuple[Path, str], dict]:
    """An earlier file of this script, its entries by run folder and encoder."""
    out = {}
    for spec, entry in json.loads(Path(path).read_text()).items():
        if isinstance(entry, dict) and "mre_mm" in entry:
            key = run_and_encoder(spec.partition("=")[0], "baseline")
            if key in out:
                raise SystemExit(f"{path}: two entries for {key[0]}:{key[1]}")
            out[key] = entry
    return out


def reused(path: str, run: Path, encoder: str, results: str) -> dict:
    """``run``'s ``encoder`` summarised again from the per-template MREs that ``path`` (earlier
    files of this script, comma-separated) hold for it, against the template of ``results``: the
    matching does not depend on which template is the chosen one."""
    key = (run, encoder)
    found = [_entries(one)[key] for one in path.split(",") if key in _entries(one)]
    if len(found) != 1:
        raise SystemExit(f"{path}: {len(found)} entries for {run}:{encoder}, not one")
    ids = list(found[0]["mre_mm"])
    mre = np.array(list(found[0]["mre_mm"].values()))
    return checked(run, mre, ids, chosen_entry(run, encoder, results))


def main() -> int:
    def analyse(run: Path, encoder: str, reuse: str = "") -> dict:
        # RUN[:ENCODER]=RESULTS: the chosen template from another results file of RUN
        if "=" in encoder:
            encoder, _, results = encoder.partition("=")
        else:
            run, _, results = str(run).partition("=")
        if reuse:
            return reused(reuse, Path(run), encoder or "baseline", results)
        return templates(Path(run), encoder or "baseline", results)

    reuse = "an earlier file of this script: its per-template MREs summarised again (no matching)"
    return cli(
        __doc__, "tools.results.template_spread", analyse, {"reuse": reuse}, finish=agreement
    )


def agreement(payload: dict) -> None:
    """Adds to ``payload`` the Spearman correlation of the per-template MREs of every two of its
    entries (``"A | B"``): whether a template good for one encoder is good for another."""
    runs = [k for k, v in payload.items() if isinstance(v, dict) and "mre_mm" in v]
    out = {}
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            ids = list(payload[a]["mre_mm"])
            x = [payload[a]["mre_mm"][t] for t in ids]
            y = [payload[b]["mre_mm"][t] for t in ids]
            out[f"{a} | {b}"] = float(stats.spearmanr(x, y).correlation)
    payload["spearman_between_entries"] = out


if __name__ == "__main__":
    sys.exit(main())
