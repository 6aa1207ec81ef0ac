"""How each candidate template is scored from an encoder's features: the building blocks of the
label-free policies (``piaug.templates.policy_scores`` picks among them).

* ``salient_points`` and ``sift_points``: a candidate's points (IIE maxima; SIFT key points);
* ``score_candidates``: each candidate's points matched into every image, scored by the peak of
  the combined similarity map (``salient``) or by each scale's best cosine (``scp``);
* ``consensus_votes`` and ``consensus_distance``: how far each candidate's predictions lie from
  the other candidates' median (``consensus``);
* ``medoid_scores``: the feature-space medoid (``medoid``).
"""

from __future__ import annotations

import concurrent.futures
import os
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from piaug import matching
from piaug.errors import UserError
from piaug.mixing import unit


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
