r"""Unsupervised template policies against every template's true MRE: does any score rank the
templates by how well their landmarks transfer?

python -m tools.results.template_policies --out=NAME --spread=SPREAD RUN[=KEY] ...

For each run's baseline encoder (grid protocol, its images), every training image is a
candidate: its salient points (``eval.salient_points`` IIE maxima, as the policy's) are matched
into every other image (forward) and each match back into the candidate (the round trip).
Each policy scores the candidates from those matches alone:

- ``confidence``: the mean peak of the combined similarity map (the paper's policy, piaug's
  ``templates.choose``);
- ``cycle_within_R``: the share of round trips that land within R pixels of where they began;
  ``cycle_error``: the mean round-trip distance (lower is better);
- ``affine_residual``: the mean distance of the round-trip-consistent (4 px) forward matches
  from the affine map that fits them best (lower: the candidate's shape is nearer the others').

Labels choose nothing: each policy's choice, among all candidates and among the 32 evenly
spaced ones that ``eval.template_candidates`` scores, is looked up in ``SPREAD`` (the file
``tools.results.template_spread`` wrote; ``KEY``: the run's entry there, the run itself by
default): its MRE, its rank of the templates, and the Spearman correlation between the policy's
score and the templates' MRE (positive: the policy prefers the better templates).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from piaug import configure, matching, templates
from tools.results import RESULTS, command
from tools.results.template_spread import encoded

RADII = (2, 4, 8)  # round-trip radii, pixels of the training grid
CHUNK = 16  # candidates' matches sent back at once


def round_trips(run: Path) -> dict[str, np.ndarray]:
    """Every candidate's salient points matched forward and back with ``run``'s baseline:
    ``points`` ``(N, P, 2)``, ``valid`` ``(N, P)``, ``forward`` and ``back`` ``(N, N, P, 2)``
    (candidate, image, point), ``score`` ``(N, N, P)`` (the forward peaks), ``ids``."""
    config, pool, features = encoded(run, "baseline")
    size = configure.image_size(config)
    policy = templates.TemplatePolicy.from_eval(config.eval)
    found = [policy.points(e["iie"], size) for e in pool.examples]
    n, most = len(found), max(len(p) for p in found)
    points = np.stack([np.concatenate([p, np.repeat(p[:1], most - len(p), 0)]) for p in found])
    valid = np.arange(most)[None] < np.array([len(p) for p in found])[:, None]
    # the policy's own setting (nearest upsampling, the cell's vectors, no refinement), the
    # run's way of combining the scales and its batch
    kw = {"size": size, "settings": configure.match_settings(config).scoring()}
    forward = np.zeros((n, n, most, 2), np.int32)
    back = np.zeros_like(forward)
    score = np.zeros((n, n, most), np.float32)
    for t in range(n):
        forward[t], score[t], back[t] = round_trip(features, t, points[t], kw)
    return {
        "ids": np.asarray(pool.ids),
        "points": points,
        "valid": valid,
        "forward": forward,
        "back": back,
        "score": score,
    }


_vectors_of_each = jax.jit(jax.vmap(matching.template_vectors))  # (N, h, w, E), (N, P, 2)


def round_trip(features: list, t: int, points: np.ndarray, kw: dict) -> tuple[np.ndarray, ...]:
    """Candidate ``t``'s ``points`` ``(P, 2)`` matched into every image (``(N, P, 2)`` and their
    peaks ``(N, P)``), and each match matched back into the candidate (``(N, P, 2)``)."""
    n, most = features[0].shape[0], len(points)
    vectors = matching.template_vectors([f[t] for f in features], points)
    forward, score = matching.match_all(features, vectors, with_scores=True, **kw)
    # every image's vectors at its matches at once, sent back CHUNK images at a time (the last
    # chunk repeats its last image: one shape, one compilation)
    each = _vectors_of_each(features, jnp.asarray(forward))
    query = [f[t : t + 1] for f in features]
    back = np.zeros_like(forward)
    for start in range(0, n, CHUNK):
        images = np.minimum(np.arange(start, start + CHUNK), n - 1)
        vectors = [v[images].reshape(CHUNK * most, -1) for v in each]
        found = matching.match_all(query, vectors, **kw)[0].reshape(CHUNK, most, 2)
        count = min(CHUNK, n - start)
        back[start : start + count] = found[:count]
    return forward, score, back


def policies(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each policy's score of every candidate (higher: preferred)."""
    n = len(m["ids"])
    use = m["valid"][:, None, :] & ~np.eye(n, dtype=bool)[:, :, None]  # not its own image

    def mean(x, where=use):
        return (x * where).sum((1, 2)) / np.maximum(where.sum((1, 2)), 1)

    trip = np.linalg.norm(m["back"] - m["points"][:, None], axis=-1)
    out = {"confidence": mean(m["score"])}
    for r in RADII:
        out[f"cycle_within_{r}"] = mean(trip <= r)
    out["cycle_error"] = -mean(trip)
    residual = np.full((n, n), np.nan)
    consistent = use & (trip <= 4)
    for t in range(n):
        for j in range(n):
            keep = consistent[t, j]
            if keep.sum() < 4:
                continue
            p = np.c_[m["points"][t][keep], np.ones(keep.sum())]
            q = m["forward"][t, j][keep].astype(np.float64)
            fit, *_ = np.linalg.lstsq(p, q, rcond=None)
            residual[t, j] = np.linalg.norm(p @ fit - q, axis=1).mean()
    fitted = np.isfinite(residual).sum(axis=1)  # a candidate with no fit comes last
    mean_residual = np.nansum(residual, axis=1) / np.maximum(fitted, 1)
    out["affine_residual"] = np.where(fitted > 0, -mean_residual, -np.inf)
    return out


def judge(scores: dict[str, np.ndarray], ids: list[str], spread: dict) -> dict:
    """Each policy's choice (all candidates, and the 32 evenly spaced) against the spread."""
    mre = np.array([spread["mre_mm"][i] for i in ids])
    rank = np.empty(len(ids), int)
    rank[np.argsort(mre)] = np.arange(1, len(ids) + 1)
    spaced = templates.spread(np.ones(len(ids), bool), 32)
    out = {}
    for name, s in scores.items():
        entry = {"spearman_with_mre": float(-stats.spearmanr(s, mre).correlation)}
        for label, allowed in (("all", np.ones(len(ids), bool)), ("spaced_32", spaced)):
            t = int(np.flatnonzero(allowed)[np.argmax(s[allowed])])
            entry[label] = {"id": ids[t], "mre_mm": float(mre[t]), "rank": int(rank[t])}
        out[name] = entry
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN[=KEY]")
    parser.add_argument("--out", required=True, help="the result file's name, without .json")
    parser.add_argument(
        "--spread", required=True, help="tools.results.template_spread's file, without .json"
    )
    args = parser.parse_args()
    spread = json.loads((RESULTS / f"{args.spread}.json").read_text())
    payload = {"command": command("tools.results.template_policies", sys.argv[1:])}
    for spec in args.runs:
        run, _, key = spec.partition("=")
        key = key or run
        if key not in spread:
            raise SystemExit(f"{key!r} is not an entry of {args.spread}.json: {list(spread)}")
        m = round_trips(Path(run))
        ids = [str(i) for i in m["ids"]]
        payload[key] = judge(policies(m), ids, spread[key])
        print(run, json.dumps(payload[key]["confidence"]), flush=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {RESULTS / args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
