"""Which images are the one-shot templates: the image pool, the label-free policies and the
choice.

The pipeline (the estimate, pseudo and evaluate stages), ``python -m piaug.predict
--choose-template(s)`` and ``piaug.api`` choose templates with the same code, so the same folder
gives the same images:

* ``ImagePool``: the prepared examples of one split, read once, and which are labelled;
* ``TemplatePolicy``: the policy and its settings (``config.eval``: ``template_policy``, salient
  points, their distance and border, how many candidates are scored), built once from a config
  or a run's ``config.json``;
* ``policy_scores``: every candidate's score by one of ``POLICIES``, from the building blocks of
  ``piaug.template_scores`` (``salient``: ``salient_points`` scored by ``score_candidates``;
  ``scp``: ``sift_points`` scored at every scale; ``consensus``: ``consensus_votes`` and
  ``consensus_distance``; ``medoid``: ``medoid_scores``);
* ``choose``: the policy over the candidates that ``spread`` picks among the allowed images;
* ``choose_template``: the pipeline's choice, kept in ``template.json`` so that every later stage
  and encoder of a run uses the same image (``config.eval.template`` overrides it);
* ``choose_set`` and ``choose_templates``: K templates as a set (``eval.template_set``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from piaug import configure, layout, matching
from piaug.errors import UserError
from piaug.template_scores import (
    consensus_distance,
    consensus_votes,
    medoid_scores,
    salient_points,
    score_candidates,
    sift_points,
)

# The label-free policies of eval.template_policy (policy_scores; docs/templates.md).
POLICIES = ("salient", "scp", "consensus", "medoid")
TEMPLATE_SETS = ("top", "cover")  # how K templates are chosen as a set (choose_set)
# SCP's key points: SIFT at the 384 grid of its code, 10 pixels apart (scaled to the grid),
# the strongest this many (its code keeps all of them: about 100 at 192 after the distance).
SCP_GRID, SCP_DISTANCE, SCP_POINTS = 384, 10.0, 128
# The consensus policy's points: the salient points of this many of the most typical images
# (the feature-space medoid's best), each located in every image by matching.
CONSENSUS_REFERENCES = 3


class ImagePool:
    """The prepared examples of one split (``config.data.split`` unless ``split``), each record
    read once: ``ids``, ``examples``, ``images`` ``(N, H, W)`` uint8 and ``labelled`` (which
    have every landmark; a folder's unlabelled images have NaN ones)."""

    def __init__(self, config, split: str | None = None):
        self.prepared = configure.prepare_data(config, split=split)
        self.ids = self.prepared.ids
        self.examples = [self.prepared.source[i] for i in range(len(self.prepared))]
        self.images = np.stack([e["image"] for e in self.examples])
        self.labelled = np.array([np.isfinite(e["landmarks"]).all() for e in self.examples])


class Subset:
    """Some examples of an ``ImagePool``: ``ids``, ``examples``, ``images``."""

    def __init__(self, pool: ImagePool, indices: list[int]):
        self.ids = [pool.ids[i] for i in indices]
        self.examples = [pool.examples[i] for i in indices]
        self.images = pool.images[indices] if indices else pool.images[:0]


@dataclasses.dataclass(frozen=True)
class TemplatePolicy:
    """A template policy and its settings (the fields of ``config.eval`` it reads).

    Attributes:
      name: the policy (``eval.template_policy``, one of ``POLICIES``).
      salient_points: candidate points per image, the strongest IIE maxima ...
      salient_distance: ... this many grid pixels apart ...
      border: ... outside this fraction of the grid at each side.
      candidates: images scored, evenly spaced among the allowed ones (0: all of them).
    """

    name: str = "salient"
    salient_points: int = 32
    salient_distance: int = 10
    border: float = 0.1
    candidates: int = 32

    def __post_init__(self):
        if self.name not in POLICIES:
            raise UserError(
                f"config.eval.template_policy={self.name!r}: use one of {POLICIES} "
                "(docs/templates.md compares them)"
            )

    @classmethod
    def from_eval(cls, cfg: Mapping) -> TemplatePolicy:
        """The settings of a config's ``eval`` section (a ConfigDict or a run's saved dict)."""
        return cls(
            name=str(cfg.get("template_policy", "salient")),
            salient_points=int(cfg["salient_points"]),
            salient_distance=int(cfg["salient_distance"]),
            border=float(cfg["border"]),
            candidates=int(cfg.get("template_candidates", 0)),
        )

    def points(self, iie: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The ``(P, 2)`` (row, col) candidate points of one image's IIE map at the grid (a
        volume's ``(P, 3)``)."""
        return salient_points(
            iie,
            count=self.salient_points,
            min_distance=self.salient_distance,
            border=int(round(self.border * min(size))),
        )


def policy_scores(
    policy: TemplatePolicy,
    features: Sequence[jnp.ndarray],
    iie: Sequence[np.ndarray],
    images: np.ndarray | None,
    candidates: np.ndarray,
    *,
    size: tuple[int, ...],
    settings: matching.MatchSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate's score by ``policy.name`` (higher: preferred; -inf where not a
    candidate) and the ``(N, N)`` per-image scores that ``choose_set`` covers the images with.

    ``salient``: the mean peak of the combined similarity map of its IIE maxima matched into
    the other images (the paper's code's policy with IIE points); ``scp``: SCP's (Quan et al.,
    CVPR 2022): its SIFT key points, each scale's highest cosine (2-D only, needs ``images``);
    ``consensus``: minus the distance of its predictions from the candidates' consensus
    (``consensus_votes``, ``consensus_distance``; the points the medoid's IIE maxima);
    ``medoid``: the feature-space medoid (``medoid_scores``). Matched with
    ``settings.scoring()``: the scores only rank.
    """
    settings = settings.scoring()
    features = [jnp.asarray(f) for f in features]  # once: every candidate reads them all
    if policy.name == "medoid":
        return medoid_scores(features, candidates=candidates)
    if policy.name == "consensus":
        typical = np.argsort(-medoid_scores(features)[0], kind="stable")
        references = typical[: min(CONSENSUS_REFERENCES, len(typical))].tolist()
        votes = consensus_votes(
            features,
            [policy.points(iie[r], size) for r in references],
            references,
            size=size,
            settings=settings,
            candidates=candidates,
        )
        return consensus_distance(votes)
    if policy.name == "scp":
        if len(size) != 2 or images is None:
            raise UserError(
                "config.eval.template_policy='scp' finds SIFT key points in 2-D images: choose "
                "another policy for volumes"
            )
        scale = min(size) / SCP_GRID
        points = [
            sift_points(
                image,
                count=SCP_POINTS,
                min_distance=SCP_DISTANCE * scale,
                border=int(round(policy.border * min(size))),
            )
            for image in images
        ]
    else:
        points = [policy.points(m, size) for m in iie]
    _, scores, per_image = score_candidates(
        features,
        points,
        size=size,
        settings=settings,
        candidates=candidates,
        per_image=True,
        per_scale=policy.name == "scp",
    )
    return scores, per_image


def choose_set(
    scores: np.ndarray, per_image: np.ndarray, count: int, first=None, rule: str = "cover"
) -> list[int]:
    """``count`` templates chosen as a set: the best-scored candidate (or ``first``, a template
    chosen before), then by ``rule`` (``eval.template_set``, one of ``TEMPLATE_SETS``):

    * ``top``: the next best-scored candidates (each template should be good on its own: the
      K predictions are fused in every image);
    * ``cover``: greedily the candidate that most raises the mean over the other images of the
      best member's score into each (a facility-location criterion: every image matched well
      through one member or another, SCP's set score).

    ``scores`` ``(N,)`` and ``per_image`` ``(N, N)`` as ``policy_scores`` returns them (-inf /
    NaN rows for images that are not candidates). One template is the single choice.
    """
    if rule not in TEMPLATE_SETS:
        raise UserError(f"config.eval.template_set={rule!r}: use one of {TEMPLATE_SETS}")
    allowed = np.flatnonzero(np.isfinite(scores))
    if count > len(allowed):
        raise UserError(
            f"eval.templates={count}: only {len(allowed)} candidate templates were scored "
            "(eval.template_candidates=0 scores every labelled image)"
        )
    chosen = [int(np.argmax(scores)) if first is None else int(first)]
    if rule == "top":
        ranked = [int(i) for i in allowed[np.argsort(-scores[allowed], kind="stable")]]
        return chosen + [i for i in ranked if i not in chosen][: count - 1]
    cover = np.where(np.isnan(per_image[chosen[0]]), -np.inf, per_image[chosen[0]])
    while len(chosen) < count:
        best, gain = None, -np.inf
        for c in allowed:
            if c in chosen:
                continue
            row = np.where(np.isnan(per_image[c]), -np.inf, per_image[c])
            rest = np.ones(len(scores), bool)
            rest[chosen + [c]] = False
            value = np.maximum(cover, row)[rest].mean() if rest.any() else 0.0
            if value > gain:
                best, gain = int(c), value
        chosen.append(best)
        cover = np.maximum(cover, np.where(np.isnan(per_image[best]), -np.inf, per_image[best]))
    return chosen


def spread(allowed: np.ndarray, count: int) -> np.ndarray:
    """A mask of ``count`` of the ``allowed`` entries, evenly spaced in order (all of them
    when ``count`` is 0 or not fewer)."""
    allowed = np.asarray(allowed, bool)
    where = np.flatnonzero(allowed)
    if count <= 0 or count >= len(where):
        return allowed.copy()
    mask = np.zeros_like(allowed)
    mask[where[np.unique(np.round(np.linspace(0, len(where) - 1, count)).astype(int))]] = True
    return mask


def choose(
    features: Sequence[np.ndarray],
    iie: Sequence[np.ndarray],
    allowed: np.ndarray,
    *,
    size: tuple[int, int],
    policy: TemplatePolicy,
    settings: matching.MatchSettings,
    images: np.ndarray | None = None,
    include: int | None = None,
    per_image: bool = False,
) -> tuple:
    """The label-free choice (``policy.name``, ``policy_scores``): ``(index, scores,
    candidates)``, the chosen image, every image's score (-inf where not scored) and the mask
    of the candidates scored; with ``per_image`` also the ``(N, N)`` per-image scores (for
    ``choose_set``).

    ``features``: per scale, ``(N, h, w, E)`` maps of the N images; ``iie``: their IIE maps at
    the grid; ``images``: the ``(N, *size)`` uint8 grid images (the ``scp`` policy's SIFT
    reads them); ``allowed``: which may be chosen (``policy.candidates`` of them are scored,
    spread over them, and ``include`` besides).
    """
    candidates = spread(allowed, policy.candidates)
    if include is not None:
        candidates[include] = True
    scores, matrix = policy_scores(
        policy, features, iie, images, candidates, size=size, settings=settings
    )
    index = int(np.argmax(scores))
    return (index, scores, candidates, matrix) if per_image else (index, scores, candidates)


def choose_in_pool(
    config,
    pool: ImagePool,
    features: Sequence[np.ndarray],
    *,
    policy: TemplatePolicy | None = None,
    settings: matching.MatchSettings | None = None,
    include: int | None = None,
    per_image: bool = False,
) -> tuple:
    """``choose`` among ``pool``'s labelled images with ``config``'s grid, policy
    (``eval.template_policy``; or ``policy``) and matching settings (or ``settings``):
    the pipeline's choice, given the encoder's ``features`` of ``pool.images``."""
    return choose(
        features,
        [e["iie"] for e in pool.examples],
        pool.labelled,
        size=configure.image_size(config),
        policy=policy or TemplatePolicy.from_eval(config.eval),
        settings=settings or configure.match_settings(config),
        images=pool.images,
        include=include,
        per_image=per_image,
    )


def choose_template(
    config, workdir: Path, pool: ImagePool, features: Callable, encoder: Path, *, save=True
) -> tuple[int, dict]:
    """The template's index in ``pool`` (``config.data.split``) and how it was chosen.

    ``config.eval.template`` if set; else the choice saved in ``workdir/template.json``; else
    the salient-point policy (``choose``) with ``features`` (a callable giving them, so they are
    computed only when needed) of the encoder in ``encoder``, saved there (when ``save``) so
    that every later stage and encoder uses the same template (delete the file to choose again).
    """
    cfg = config.eval
    path = workdir / layout.TEMPLATE_FILE
    if cfg.template or path.exists():
        return _chosen_before(config, path, pool)
    if not pool.labelled.any():
        raise UserError(
            f"no image of split {config.data.split!r} has landmarks: the one-shot template is "
            "chosen among the labelled images (use piaug.predict --choose-template to pick the "
            "image to annotate)"
        )
    # 150 ceph candidates at 192 with 64-d embeddings: about 5 minutes beside a training.
    policy = TemplatePolicy.from_eval(cfg)
    index, scores, candidates = choose_in_pool(config, pool, features(), policy=policy)
    chosen = {
        "id": pool.ids[index],
        "chosen_by": "salient-point policy"
        if policy.name == "salient"
        else f"{policy.name} policy",
        "score": float(scores[index]),
        "encoder": str(encoder),
    }
    if save and jax.process_index() == 0:
        layout.write_json(path, chosen)
    logging.info(
        "template: %s (score %.4f, of %d candidates scored%s)",
        chosen["id"],
        scores[index],
        int(candidates.sum()),
        f" of {int(pool.labelled.sum())} labelled: eval.template_candidates=0 scores all"
        if candidates.sum() < pool.labelled.sum()
        else "",
    )
    return index, chosen


def templates_file(count: int) -> str:
    """Where a run keeps its set of ``count`` templates (``template.json`` for one)."""
    return layout.TEMPLATE_FILE if count == 1 else f"templates-{count}.json"


def choose_templates(
    config,
    workdir: Path,
    pool: ImagePool,
    features: Callable,
    encoder: Path,
    *,
    save=True,
    save_set=True,
) -> tuple[list[int], dict]:
    """``config.eval.templates`` (K) templates: their indices in ``pool`` and how they were
    chosen (``ids``). K = 1 is ``choose_template``. Else the K ids that ``config.eval.template``
    lists (comma-separated); else the set kept in ``workdir/templates-K.json``; else the run's
    single template (``choose_template``: ``config.eval.template`` naming one, or
    ``template.json``, or the policy) and K - 1 more by ``choose_set`` over the salient-point
    scores of the encoder in ``encoder``, kept there (when ``save_set``; ``save`` is
    ``choose_template``'s, for the single one)."""
    count = int(config.eval.templates)
    if count < 1:
        raise UserError(f"config.eval.templates={count}: give 1 or more")
    if count == 1:
        index, chosen = choose_template(config, workdir, pool, features, encoder, save=save)
        return [index], dict(chosen, ids=[chosen["id"]])
    named = [t.strip() for t in str(config.eval.template).split(",") if t.strip()]
    path = workdir / templates_file(count)
    if len(named) not in (0, 1, count) or len(set(named)) != len(named):
        raise UserError(
            f"config.eval.template={config.eval.template!r}: for config.eval.templates={count} "
            f"name {count} distinct images, comma-separated, or one (the others are chosen)"
        )
    if len(named) == count:
        chosen = {"ids": named, "chosen_by": "config.eval.template"}
    elif path.exists() and not named:
        chosen = layout.read_json(path)
        logging.info("templates: %s, chosen earlier and kept in %s", chosen["ids"], path)
    else:
        features = functools.cache(features)  # encoded once for both choices
        first, single = choose_template(config, workdir, pool, features, encoder, save=save)
        _, scores, candidates, per_image = choose_in_pool(
            config, pool, features(), include=first, per_image=True
        )
        rule = config.eval.get("template_set", "cover")
        indices = choose_set(scores, per_image, count, first=first, rule=rule)
        chosen = {
            "ids": [pool.ids[i] for i in indices],
            "chosen_by": f"{single['chosen_by']}, then eval.template_set={rule!r}",
            "scores": [float(scores[i]) for i in indices],
            "encoder": str(encoder),
        }
        if save_set and not named and jax.process_index() == 0:
            layout.write_json(path, chosen)
        logging.info("templates: %s (of %d candidates scored)", chosen["ids"], candidates.sum())
    indices = []
    for name in chosen["ids"]:
        if name not in pool.ids or not pool.labelled[pool.ids.index(name)]:
            raise UserError(
                f"template {name!r} ({chosen['chosen_by']}) is not a labelled image of split "
                f"{config.data.split!r}: name one that is"
                + (f", or delete {path} to choose again" if path.exists() else "")
            )
        indices.append(pool.ids.index(name))
    return indices, chosen


def _chosen_before(config, path: Path, pool: ImagePool) -> tuple[int, dict]:
    """The template named by ``config.eval.template`` or kept in ``path``, checked against
    ``pool``."""
    cfg = config.eval
    if cfg.template:
        chosen = {"id": cfg.template, "chosen_by": "config.eval.template", "score": None}
        where = "config.eval.template"
    else:
        chosen, where = layout.read_json(path), str(path)
        logging.info(
            "template: %s, chosen earlier and kept in %s (--config.force keeps it too, so "
            "that every stage and encoder shares it): delete the file to choose again",
            chosen["id"],
            path,
        )
    if chosen["id"] not in pool.ids:
        raise UserError(
            f"{where}: template {chosen['id']!r} is not an image of split "
            f"{config.data.split!r} (e.g. {pool.ids[:3]}); name one that is"
            + ("" if cfg.template else ", or delete the file to choose again")
        )
    index = pool.ids.index(chosen["id"])
    if not pool.labelled[index]:
        raise UserError(
            f"{where}: template {chosen['id']!r} has no landmarks; the one-shot template "
            "must be annotated: name a labelled image, or annotate it"
        )
    return index, chosen
