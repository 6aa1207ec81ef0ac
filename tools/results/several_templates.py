r"""How much several annotated templates help: a run's encoder matched from K templates, their
predictions fused per landmark, against K (issue 34).

python -m tools.results.several_templates --out=NAME [--ks=1,2,3,5,10] [--draws=20] \
    [--policies=salient,consensus] [--sets=cover,top] RUN[:ENCODER] ...

For each run (its encoder, ``baseline`` by default; grid protocol, the run's training split,
its evaluation settings): every labelled image is matched as the template into every image
once; then for each K and each fusion rule (``matching.FUSION``), the MRE over the images that
are not templates of

- ``policy``: the set the evaluate stage chooses with ``--config.eval.templates=K`` (the run's
  template, then ``templates.choose_set`` over the salient-point scores of the policy's
  candidates), without labels;
- ``random``: ``--draws`` random sets of K labelled images (mean, standard deviation, best and
  worst over the draws);
- ``copy``: the policy's templates' landmarks copied unmoved, fused as the predictions;
- ``oracle``: the K templates of lowest single-template MRE (the labels choose: a bound, not a
  policy).
K = 1 with the policy is the run's one-shot result, checked against its ``results.json``.

With ``--policies`` and ``--sets``, each K's ``sets`` also holds, for each
``eval.template_policy`` and ``eval.template_set`` named, the set the pipeline would choose with
them from the start (the policy's own first template among the run's candidates, then the set
rule) and its MRE under each fusion rule. Every template's predictions are kept in
``RUN/all_templates_ENCODER.npz`` and read from there the next time. ``single_mre_mm``: each
template's MRE alone; ``single_offset_mm`` and ``single_scatter_mm`` split it (``offsets``).
"""

from __future__ import annotations

import sys

import numpy as np

from piaug import configure, matching, templates
from piaug.templates import choose_set
from tools.results.landmark_errors import cli, grid_truth
from tools.results.template_spread import chosen_entry, encoded


def all_templates(features, pool, size, settings) -> tuple[np.ndarray, np.ndarray]:
    """Every image as the template matched into every image: ``(T, N, L, 2)`` row-first points
    and ``(T, N, L)`` peak scores."""
    points, scores = [], []
    for t, example in enumerate(pool.examples):
        cells = matching.template_cells(example["landmarks"], size)
        vectors = matching.template_vectors(
            [f[t] for f in features], cells, strides=settings.strides, sampling=settings.sampling
        )
        p, s = matching.match_all(
            features, vectors, size=size, settings=settings, with_scores=True, centres=cells
        )
        points.append(p)
        scores.append(s)
    return np.stack(points), np.stack(scores)


def mre(points, scores, members, rule, truth, spacing) -> float:
    """The MRE (mm) of the ``members``' fused predictions over the images outside them."""
    rest = np.setdiff1d(np.arange(points.shape[1]), members)
    fused, _ = matching.fuse(points[members][:, rest], scores[members][:, rest], rule)
    offset = (np.asarray(fused, np.float64)[..., ::-1] - truth[rest]) * spacing[rest, None, :]
    return float(np.linalg.norm(offset, axis=-1).mean())


def cached(run, encoder, features, pool, size, settings) -> tuple[np.ndarray, np.ndarray]:
    """``all_templates``, kept in ``RUN/all_templates_ENCODER.npz``."""
    path = run / f"all_templates_{encoder}.npz"
    if path.exists():
        saved = np.load(path)
        if list(saved["ids"]) == list(pool.ids):
            return saved["points"], saved["scores"]
    points, scores = all_templates(features, pool, size, settings)
    np.savez(path, points=points, scores=scores, ids=np.asarray(pool.ids))
    return points, scores


def offsets(points, truth, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Each template's systematic offset and the scatter around it: ``(T,)`` the mean over
    landmarks of the length of its mean error vector over the other images (mm), and ``(T,)``
    the MRE once that mean vector is taken off each landmark's errors. A template annotated
    (or matched) consistently off at a landmark carries that offset into every image, which no
    label-free score can see."""
    bias, scatter = [], []
    for t in range(len(points)):
        rest = np.setdiff1d(np.arange(points.shape[1]), [t])
        error = (points[t][rest][..., ::-1] - truth[rest]) * spacing[rest, None, :]  # (N, L, 2)
        mean = error.mean(0)
        bias.append(float(np.linalg.norm(mean, axis=-1).mean()))
        scatter.append(float(np.linalg.norm(error - mean, axis=-1).mean()))
    return np.array(bias), np.array(scatter)


def analyse(
    run, encoder: str, ks: str = "", draws: str = "", policies: str = "", sets: str = ""
) -> dict:
    ks_ = [int(k) for k in (ks or "1,2,3,5,10").split(",")]
    draws_ = int(draws or 20)
    entry = chosen_entry(run, encoder)
    config, pool, features = encoded(run, encoder)
    settings = matching.MatchSettings.from_eval({**config.eval.to_dict(), **entry.get("eval", {})})
    size = configure.image_size(config)
    spacing, truth = grid_truth(pool.examples, size)
    labelled = np.flatnonzero(pool.labelled)
    points, scores = cached(run, encoder, features, pool, size, settings)
    single = np.array(
        [mre(points, scores, [t], "median", truth, spacing) for t in range(len(pool.ids))]
    )
    first = pool.ids.index(entry["template"]["id"])
    if not np.isclose(single[first], entry["mre_mm"], atol=1e-3):
        raise SystemExit(
            f"{run}: MRE from {pool.ids[first]} {single[first]:.4f} != results.json's "
            f"{entry['mre_mm']}"
        )
    _, policy_scores, _, per_image = templates.choose_in_pool(  # the evaluate stage's choice
        config, pool, features, settings=settings, include=first, per_image=True
    )
    # the copy: each template's own landmarks (row first), as the evaluate stage copies them
    landmarks = np.stack([np.asarray(e["landmarks"], np.float64)[:, ::-1] for e in pool.examples])
    copied = np.broadcast_to(landmarks[:, None], points.shape)  # (T, N, L, 2), every image
    no_scores = np.zeros(points.shape[:3])
    rng = np.random.default_rng(0)
    out = {
        "templates": len(labelled),
        "single_mre_mm": dict(zip(pool.ids, single.tolist(), strict=True)),
    }
    bias, scatter = offsets(points, truth, spacing)
    out["single_offset_mm"] = dict(zip(pool.ids, bias.round(4).tolist(), strict=True))
    out["single_scatter_mm"] = dict(zip(pool.ids, scatter.round(4).tolist(), strict=True))
    others = {}  # (policy, set rule) -> its scores and per-image scores, its first template
    for name in [p for p in policies.split(",") if p]:
        found = templates.choose_in_pool(
            config,
            pool,
            features,
            policy=templates.TemplatePolicy.from_eval(dict(config.eval, template_policy=name)),
            settings=settings,
            per_image=True,
        )
        for rule in [r for r in (sets or "cover").split(",") if r]:
            others[f"{name}/{rule}"] = (found[1], found[3], found[0], rule)
    for k in ks_:
        chosen = choose_set(policy_scores, per_image, k, first=first)
        oracle = labelled[np.argsort(single[labelled], kind="stable")[:k]]
        sets = [rng.choice(labelled, k, replace=False) for _ in range(draws_)]
        row = {"policy_ids": [pool.ids[i] for i in chosen], "by_rule": {}}
        for rule in matching.FUSION:
            random = [mre(points, scores, s, rule, truth, spacing) for s in sets]
            row["by_rule"][rule] = {
                "policy": mre(points, scores, chosen, rule, truth, spacing),
                "copy": mre(copied, no_scores, chosen, rule, truth, spacing),
                "oracle": mre(points, scores, oracle, rule, truth, spacing),
                "random_mean": float(np.mean(random)),
                "random_std": float(np.std(random, ddof=1)) if draws_ > 1 else 0.0,
                "random_best": float(np.min(random)),
                "random_worst": float(np.max(random)),
            }
        row["sets"] = {}
        for key, (s_, matrix, own_first, rule) in others.items():
            members = choose_set(s_, matrix, k, first=own_first, rule=rule)
            row["sets"][key] = {
                "ids": [pool.ids[i] for i in members],
                "mre_mm": {
                    fusion: mre(points, scores, members, fusion, truth, spacing)
                    for fusion in matching.FUSION
                },
            }
        out[str(k)] = row
    return out


def main() -> int:
    options = {
        "ks": "the numbers of templates, comma-separated (default 1,2,3,5,10)",
        "draws": "random sets drawn for each K (default 20)",
        "policies": "eval.template_policy values whose sets to score too, comma-separated",
        "sets": "eval.template_set rules for those (default cover), comma-separated",
    }
    return cli(__doc__, "tools.results.several_templates", analyse, options)


if __name__ == "__main__":
    sys.exit(main())
