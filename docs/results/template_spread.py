r"""How much the one-shot result depends on the template: a run's encoder (grid protocol, its
images, as ``evaluate``) matched from every image of the split in turn as the template, into
the other images; each template's MRE, and where the policy's own choice (the run's
``results.json``) falls among them. Labels choose nothing here: they only score each template.

python docs/results/template_spread.py --out=NAME RUN[:ENCODER][=RESULTS] ...

``ENCODER`` is ``baseline`` (default) or ``piaug``; each run needs its ``results.json`` (the
template it evaluated from, whose MRE is checked against it; ``=RESULTS`` names another
results file of the run, a name or a glob, e.g. the evaluation from the policy's template
when the run was given another) and its data where its ``config.json`` says.

``--reuse=FILE[,FILE]`` matches nothing: it summarises each run's per-template MREs from the
earlier outputs of this script again against the template of its results file, e.g. after
the run was evaluated from another template.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from collect_runs import one_file, with_defaults  # noqa: E402
from landmark_errors import cli, grid_truth  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from piaug import checkpoints, configure, layout, matching, pipeline  # noqa: E402


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


def templates(run: Path, encoder: str, results: str = "") -> dict:
    """Every template's MRE into the other images of ``run``'s split, for ``encoder``."""
    config = ConfigDict(with_defaults(layout.read_json(run / layout.CONFIG_FILE)))
    entry = chosen_entry(run, encoder, results)
    pool = pipeline._Images(config)
    size = configure.image_size(config)
    spacing, truth = grid_truth(pool.examples, size)
    ckpt = layout.trained_encoders(run, config.train.baseline)[encoder]
    apply = checkpoints.image_encoder(ckpt, configure.model(config))
    # on the device once: every template matches into all of them
    features = [
        jnp.asarray(f)
        for f in matching.encode(apply, pool.images, batch_size=config.eval.batch_size)
    ]
    kw = {"size": size, "batch_size": config.eval.batch_size, "upsample": config.eval.upsample}
    kw |= {"subpixel": config.eval.subpixel, "combine": config.eval.combine}
    mre = np.zeros(len(pool.ids))
    for t, example in enumerate(pool.examples):
        rows_cols = np.clip(
            np.round(example["landmarks"][:, ::-1]).astype(np.int64), 0, np.asarray(size) - 1
        )
        vectors = matching.template_vectors([f[t] for f in features], rows_cols)
        found = matching.match_all(features, vectors, **kw)
        offset = (found[..., ::-1] - truth) * spacing[:, None, :]
        mre[t] = np.delete(np.linalg.norm(offset, axis=-1), t, axis=0).mean()
    chosen = entry["template"]["id"]
    if not np.isclose(mre[pool.ids.index(chosen)], entry["mre_mm"], atol=1e-3):
        raise SystemExit(
            f"{run}: MRE from {chosen} {mre[pool.ids.index(chosen)]:.4f} != "
            f"results.json's {entry['mre_mm']}"
        )
    return spread(mre, list(pool.ids), chosen)


def reused(path: str, run: Path, encoder: str, results: str) -> dict:
    """``run``'s ``encoder`` summarised again from the per-template MREs that ``path`` (earlier
    files of this script, comma-separated) hold for it, against the template of ``results``: the
    matching does not depend on which template is the chosen one."""
    found = [
        entry
        for one in path.split(",")
        for spec, entry in json.loads(Path(one).read_text()).items()
        if "mre_mm" in entry
        and Path(spec.partition("=")[0].partition(":")[0]) == run
        and (spec.partition("=")[0].partition(":")[2] or "baseline") == encoder
    ]
    if len(found) != 1:
        raise SystemExit(f"{path}: {len(found)} entries for {run}:{encoder}, not one")
    entry = found[0]
    ids, mre = list(entry["mre_mm"]), np.array(list(entry["mre_mm"].values()))
    chosen = chosen_entry(run, encoder, results)
    if not np.isclose(mre[ids.index(chosen["template"]["id"])], chosen["mre_mm"], atol=1e-3):
        raise SystemExit(
            f"{run}: {path}'s MRE from {chosen['template']['id']} differs from its results file's"
        )
    return spread(mre, ids, chosen["template"]["id"])


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
    status = cli(__doc__, "template_spread.py", analyse, {"reuse": reuse})
    agreement(HERE / f"{_out_name()}.json")
    return status


def _out_name() -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out")
    return parser.parse_known_args()[0].out


def agreement(path: Path) -> None:
    """Adds to ``path`` the Spearman correlation of the per-template MREs of every two of its
    entries (``"A | B"``): whether a template good for one encoder is good for another."""
    data = json.loads(path.read_text())
    runs = [k for k in data if k != "command" and "mre_mm" in data[k]]
    out = {}
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            ids = list(data[a]["mre_mm"])
            x = [data[a]["mre_mm"][t] for t in ids]
            y = [data[b]["mre_mm"][t] for t in ids]
            out[f"{a} | {b}"] = float(stats.spearmanr(x, y).correlation)
    data["spearman_between_entries"] = out
    path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
