"""Which images are the one-shot templates: the image pool, the label-free policies and the
choice.

The pipeline (the estimate, pseudo and evaluate stages), ``python -m piaug.predict
--choose-template(s)`` and ``piaug.api`` choose templates with the same code, so the same folder
gives the same images:

* ``ImagePool``: the prepared examples of one split, read once, and which are labelled;
* ``TemplatePolicy``: the policy and its settings (``config.eval``: ``template_policy``, salient
  points, their distance and border, how many candidates are scored), built once from a config
  or a run's ``config.json``;
* ``policy_scores``: every candidate's score by one of ``POLICIES`` (``salient``: the salient
  points of ``salient_points`` scored by ``score_candidates``; ``scp``: ``sift_points`` scored
  at every scale; ``consensus``: ``consensus_votes`` and ``consensus_distance``; ``medoid``:
  ``medoid_scores``);
* ``choose``: the policy over the candidates that ``spread`` picks among the allowed images;
* ``choose_template``: the pipeline's choice, kept in ``template.json`` so that every later stage
  and encoder of a run uses the same image (``config.eval.template`` overrides it);
* ``choose_set`` and ``choose_templates``: K templates as a set (``eval.template_set``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from piaug import configure, layout, matching
from piaug.errors import UserError
from piaug.mixing import unit

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


def salient_points(iie: np.ndarray, *, count: int, min_distance: int, border: int) -> np.ndarray:
    """Up to ``count`` local maxima (row, col) of an IIE map (3 x 3 neighbourhoods, plateaus
    excluded), strongest first, at least ``border`` pixels inside the image and
    ``min_distance`` pixels (Chebyshev) apart. A volume's: ``(P, 3)`` (slice, row, col),
    3 x 3 x 3 neighbourhoods."""
    from scipy import ndimage

    iie = np.asarray(iie, np.float64)
    peaks = iie == ndimage.maximum_filter(iie, size=3, mode="nearest")
    peaks &= iie > ndimage.minimum_filter(iie, size=3, mode="nearest")  # not on a plateau
    if border > 0:
        for axis in range(iie.ndim):
            index = [slice(None)] * iie.ndim
            for edge in (slice(None, border), slice(-border, None)):
                index[axis] = edge
                peaks[tuple(index)] = False
    where = np.argwhere(peaks)
    where = where[np.argsort(-iie[tuple(where.T)], kind="stable")]
    chosen: list[np.ndarray] = []
    for p in where:
        if all(np.abs(p - q).max() >= min_distance for q in chosen):
            chosen.append(p)
            if len(chosen) == count:
                break
    return np.asarray(chosen, np.int64).reshape(-1, iie.ndim)


def score_candidates(
    features: Sequence[jnp.ndarray],
    points: Sequence[np.ndarray],
    *,
    size: tuple[int, int],
    settings: matching.MatchSettings,
    candidates: Sequence[bool] | None = None,
    per_image: bool = False,
    per_scale: bool = False,
) -> tuple[int, np.ndarray] | tuple[int, np.ndarray, np.ndarray]:
    """The candidate whose salient points match most confidently into the other images.

    Args:
      features: per scale, ``(N, h, w, E)`` maps of the N training images.
      points: per image, its ``(P_i, 2)`` salient points (``salient_points``).
      settings: how to match; its batch is the images matched at once (memory:
        ``batch_size * P * H * W`` floats). Callers pass ``settings.scoring()``.
      candidates: which images may be chosen (e.g. the labelled ones; all by default); every
        image is matched into either way.
      per_image: also return each candidate's score into each image.
      per_scale: score each point by the mean over the scales of each scale's own highest
        cosine (SCP's scores at every scale) instead of the combined map's maximum.

    Returns:
      ``(index, scores)``: the chosen image and every candidate's score, the mean over its
      points and the other images of the maximum of the combined similarity map (-inf where
      not a candidate); with ``per_image`` also ``(N, N)``: candidate i's mean over its points
      into image j (NaN on the diagonal and in the rows of non-candidates).
    """
    features = [jnp.asarray(f) for f in features]  # once: every candidate reads them all
    n = features[0].shape[0]
    most = max(len(p) for p in points)
    if most == 0:
        raise ValueError("no candidate has salient points: lower the border or the distance")
    size, batch_size = tuple(size), settings.batch_size
    kw = settings.keywords()
    picked = settings.pick(features)

    def candidate(i: int) -> tuple[float, np.ndarray]:
        p = np.asarray(points[i]).reshape(-1, len(size))
        if len(p) == 0 or (candidates is not None and not candidates[i]):
            return -np.inf, np.full(n, np.nan)
        padded = np.concatenate([p, np.repeat(p[:1], most - len(p), axis=0)])  # one shape
        templates = settings.pick(
            matching.template_vectors(
                [f[i] for f in features],
                padded,
                strides=settings.strides,
                sampling=settings.sampling,
            )
        )
        best = np.concatenate(
            [
                np.asarray(
                    _scale_peaks([f[j : j + batch_size] for f in picked], templates)
                    if per_scale
                    else matching.match_jit(
                        [f[j : j + batch_size] for f in picked], templates, size=size, **kw
                    )[1]
                )
                for j in range(0, n, batch_size)
            ]
        )[:, : len(p)]
        row = best.mean(1, dtype=np.float64)
        row[i] = np.nan
        return float(np.delete(best, i, axis=0).mean()), row

    scored = _each(candidate, range(n))
    scores = np.array([score for score, _ in scored])
    if per_image:
        return int(np.argmax(scores)), scores, np.stack([row for _, row in scored])
    return int(np.argmax(scores)), scores


def _each(fn: Callable, items: Sequence) -> list:
    """``fn`` of every candidate in ``items``, with a progress bar. XLA's CPU executables run
    on the calling thread and release the GIL: on a CPU, candidates are scored on several
    threads at once (one core each); elsewhere one after another."""
    threads = min(os.cpu_count() or 1, 8) if jax.default_backend() == "cpu" else 1
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(
            tqdm(
                pool.map(fn, items),
                total=len(items),
                desc="template choice",
                unit="candidate",
                leave=False,
            )
        )


@jax.jit
def _scale_peaks(query_features: list, templates: list) -> jnp.ndarray:
    """``(B, L)``: the mean over the scales of each template vector's highest cosine in each
    query image's map of that scale (``(B, ..., E)`` maps, ``(L, E)`` vectors per scale)."""
    peaks = [
        jnp.einsum("b...e,le->bl...", unit(f), unit(t), precision=jax.lax.Precision.HIGHEST)
        .reshape(f.shape[0], t.shape[0], -1)
        .max(-1)
        for f, t in zip(query_features, templates, strict=True)
    ]
    return jnp.mean(jnp.stack(peaks), axis=0)


def sift_points(image: np.ndarray, *, count: int, min_distance: float, border: int) -> np.ndarray:
    """SCP's candidate points of one 2-D image: its SIFT key points (scikit-image's, on the
    grid image), strongest first by the difference of Gaussians at the point's scale, at least
    ``border`` pixels inside the image and ``min_distance`` pixels (Euclidean) apart, up to
    ``count``: ``(P, 2)`` (row, col). An image without key points (a blank one) has none."""
    from scipy import ndimage
    from skimage.feature import SIFT

    image = np.asarray(image, np.float64) / 255.0
    sift = SIFT()
    try:
        sift.detect(image)
    except RuntimeError:  # scikit-image's "SIFT found no features"
        return np.zeros((0, 2), np.int64)
    where = np.asarray(np.round(sift.positions), np.int64)
    where = np.clip(where, 0, np.asarray(image.shape) - 1)
    step = 2 ** (1 / sift.n_scales)
    blurred: dict[float, np.ndarray] = {}

    def dog(sigma: float) -> np.ndarray:
        sigma = round(float(sigma), 1)
        if sigma not in blurred:
            wide = ndimage.gaussian_filter(image, sigma * step)
            blurred[sigma] = np.abs(wide - ndimage.gaussian_filter(image, sigma))
        return blurred[sigma]

    response = np.array([dog(s)[tuple(p)] for p, s in zip(where, sift.sigmas, strict=True)])
    inside = np.all((where >= border) & (where < np.asarray(image.shape) - border), axis=1)
    where, response = where[inside], response[inside]
    chosen: list[np.ndarray] = []
    for p in where[np.argsort(-response, kind="stable")]:
        if all(np.hypot(*(p - q)) >= min_distance for q in chosen):
            chosen.append(p)
            if len(chosen) == count:
                break
    return np.asarray(chosen, np.int64).reshape(-1, 2)


def consensus_votes(
    features: Sequence[jnp.ndarray],
    points: Sequence[np.ndarray],
    references: Sequence[int],
    *,
    size: tuple[int, ...],
    settings: matching.MatchSettings,
    candidates: Sequence[bool] | None = None,
) -> np.ndarray:
    """The consensus policy's predictions, for ``consensus_distance``.

    Each reference image's ``points`` (``(P, d)``, one array per entry of ``references``) are
    located in every image by matching; each candidate is then the template of those points
    (its own located ones) into every image. ``consensus_distance`` pools the candidates'
    predictions of each point in each image by their median, the consensus, and scores a
    candidate by its mean distance (grid pixels) from it: several templates fused are more
    accurate than one (docs/templates.md), so a template far from them errs. A reference
    knows its own points exactly, which would favour it: its predictions of them are left out.
    Cost: one match of the references' points into the N images per candidate, as
    ``score_candidates``.

    Returns ``(N, N, P, d)`` (candidate, image, point of all the references' together, axis),
    NaN in the rows of non-candidates and where a reference would predict its own points.
    """
    features = [jnp.asarray(f) for f in features]
    n = features[0].shape[0]
    if not any(len(p) for p in points):
        raise UserError(
            "the consensus policy's reference images have no salient points: lower "
            "eval.border or eval.salient_distance"
        )
    chosen = np.flatnonzero(np.ones(n, bool) if candidates is None else np.asarray(candidates))

    def vectors(i: int, at: np.ndarray) -> list:
        return matching.template_vectors(
            [f[i] for f in features], at, strides=settings.strides, sampling=settings.sampling
        )

    located, own = [], []  # per reference: (N, P, d) where its points are; which columns
    for r, p in zip(references, points, strict=True):
        found = matching.match_all(
            features, vectors(r, np.asarray(p)), size=size, settings=settings
        )
        found[r] = p
        located.append(found)
        own.append(np.full(len(p), r))
    located, own = np.concatenate(located, axis=1), np.concatenate(own)
    found = _each(
        lambda t: matching.match_all(
            features, vectors(t, located[t]), size=size, settings=settings
        ),
        chosen,
    )
    votes = np.full((n, n, *located.shape[1:]), np.nan)  # (candidate, image, point, axis)
    votes[chosen] = np.stack(found)
    votes[own, :, np.arange(len(own))] = np.nan  # a reference's own points
    return votes


def consensus_distance(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The consensus policy's scores from the candidates' predictions ``votes`` ``(N, N, P, d)``
    (``consensus_votes``: candidate, image, point, axis; NaN where a candidate does not vote,
    rows of NaN: not a candidate): the consensus in each image is the median of the other
    candidates' predictions, per coordinate.

    Returns ``(scores (N,), per_image (N, N))``: minus the mean distance over the points and the
    other images (-inf where not a candidate), and minus each candidate's mean distance in each
    image (NaN on the diagonal and in the rows of non-candidates).
    """
    votes = np.array(votes, np.float64)
    n = len(votes)
    votes[np.arange(n), np.arange(n)] = np.nan  # a candidate does not vote in its own image
    chosen = np.flatnonzero(np.isfinite(votes).any(axis=(1, 2, 3)))
    with warnings.catch_warnings():  # an image or a point without votes stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmedian(votes[chosen], axis=0)  # (N, P, d)
        distance = np.nanmean(np.linalg.norm(votes - centre[None], axis=-1), axis=-1)  # (N, N)
        scores = np.full(n, -np.inf)
        scores[chosen] = -np.nanmean(distance[chosen], axis=1)
    return scores, -distance


def medoid_scores(
    features: Sequence[jnp.ndarray], *, candidates: Sequence[bool] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The feature-space medoid: each candidate's mean cosine with every other image at the
    same grid positions, cell by cell, over the scales. It assumes images that lie roughly
    alike in their grid (as the search radius does); it costs N^2 dot products, no matching.

    Returns ``(scores (N,), per_image (N, N))`` as ``consensus_distance``: the mean over the other
    images (-inf where not a candidate) and each pair's similarity (NaN on the diagonal).
    """
    n = features[0].shape[0]
    total = np.zeros((n, n))
    for f in features:
        u = unit(jnp.asarray(f, jnp.float32)).reshape(n, -1)
        cells = u.shape[1] // f.shape[-1]
        total += np.asarray(jnp.dot(u, u.T, precision=jax.lax.Precision.HIGHEST)) / cells
    total /= len(features)
    np.fill_diagonal(total, np.nan)
    allowed = np.ones(n, bool) if candidates is None else np.asarray(candidates, bool)
    scores = np.where(allowed, np.nanmean(total, axis=1), -np.inf)
    return scores, np.where(allowed[:, None], total, np.nan)


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
