"""Per-cluster stability: how reliably refits on subsamples find each cluster.

A cluster's score is Hennig's clusterboot measure (Hennig 2007, "Cluster-wise
assessment of cluster stability"), with subsetting instead of the bootstrap:
draw a random subsample of the data (without replacement), cluster it again
*from scratch* with the same method, loss and k, and take, for each cluster of
the run restricted to the subsample, its best Jaccard similarity with a
cluster of the refit; the score is the mean over the subsamples. A real group
is found again whatever the sample and the seeds (score near 1); a cluster cut
out of noise or out of a larger group moves with them (Hennig reads below 0.5
as dissolved, 0.6-0.75 as a pattern, above 0.85 as highly stable). The
run-level score is the size-weighted mean of the clusters' scores.

Choices, their bias and cost:

* **Subsetting, not the bootstrap**: a bootstrap sample repeats points, which
  weights them double in k-means; a subsample is the same data distribution.
* **Refits from scratch**, not warm started from the run's centers: Lloyd
  iterations started at a local optimum of the same data stay in its basin, so
  every cluster, an artefact included, would be found again (scores biased
  towards 1 and useless for telling them apart).
* **Fewer restarts per refit** (``kmeans_stability``: at most 3, the run's
  plugin default is 10): a refit that lands in a worse local optimum lowers
  the scores of the clusters it merged or split, so fewer restarts bias every
  score down. On the demo + hymenoptera embeddings (7 pure groups) the
  clusters score 0.61-0.97 with one restart per refit, 0.78-0.99 with three and
  0.93-1.00 with ten; a noise cluster or a merged / split blob stays far
  below either way (bench/README.md). Three restarts keep the cost bounded.
* **Bounded subsamples** (``max_samples``): above ``max_samples / fraction``
  samples a refit sees ``max_samples`` points, so its cost no longer grows
  with n: about ``n_resamples * restarts * max_samples / (n_init * n)`` of the
  fit's time for k-means, under 1x at 100,000 samples with the defaults (see
  bench/README.md). The score is then the stability at that sample size: a
  little lower than at the full size, for the smallest clusters most (a
  cluster of 0.1% of the data keeps about 10 points in a subsample of 10,000).

Pure numpy / torch: no FiftyOne import.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .kmeans import GeneralizedKMeans

__all__ = ["ClusterStability", "cluster_stability", "jaccard_matches", "kmeans_stability"]

N_RESAMPLES = 20
SAMPLE_FRACTION = 0.5
MAX_SAMPLES = 10_000
REFIT_RESTARTS = 3


@dataclass
class ClusterStability:
    """Result of :func:`cluster_stability`.

    Attributes:
        scores: (k,) mean best Jaccard of each cluster over the subsamples, in
            [0, 1] (NaN for a cluster absent from every subsample)
        score: size-weighted mean of ``scores`` (the run's stability)
        jaccard: (n_resamples, k) best Jaccard per subsample (NaN where the
            cluster had no point in the subsample)
        sample_size: points per subsample
    """

    scores: np.ndarray
    score: float
    jaccard: np.ndarray
    sample_size: int


def jaccard_matches(labels, refit, k=None):
    """(k,) best Jaccard similarity of each cluster of ``labels`` (0..k-1; -1 =
    noise, in no cluster) with any cluster of ``refit`` on the same points;
    NaN for a cluster with no point (k: ``labels.max() + 1`` by default)."""
    labels = np.asarray(labels, dtype=np.int64)
    refit = np.asarray(refit, dtype=np.int64)
    if k is None:
        k = int(labels.max()) + 1 if labels.size else 0
    k_refit = max(int(refit.max()) + 1 if refit.size else 0, 1)
    sizes = np.bincount(labels[labels >= 0], minlength=k)
    refit_sizes = np.bincount(refit[refit >= 0], minlength=k_refit)
    both = (labels >= 0) & (refit >= 0)
    counts = np.bincount(labels[both] * k_refit + refit[both],
                         minlength=k * k_refit).reshape(k, k_refit)
    union = sizes[:, None] + refit_sizes[None, :] - counts
    best = (counts / np.maximum(union, 1)).max(axis=1)
    return np.where(sizes > 0, best, np.nan)


def cluster_stability(X, labels, fit, n_resamples=N_RESAMPLES, sample_fraction=SAMPLE_FRACTION,
                      max_samples=MAX_SAMPLES, random_state=None, progress=None):
    """Stability of each cluster of ``labels`` under refits on subsamples of ``X``.

    Args:
        X: (n, d) numpy array or torch tensor, the features that were clustered
        labels: (n,) cluster of each sample (0..k-1; -1 = noise)
        fit: ``fit(X_sub) -> labels_sub``, the same method, loss and k refitted
            from scratch (different seeds on each call)
        n_resamples: subsamples drawn
        sample_fraction: share of the samples in each subsample
        max_samples: at most this many points per subsample (bounds the cost)
        random_state: seed of the subsamples
        progress: optional ``progress(fraction, message)``

    Returns:
        a :class:`ClusterStability`
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if X.shape[0] != n:
        raise ValueError(f"X has {X.shape[0]} rows but labels has {n}")
    if not (isinstance(n_resamples, (int, np.integer)) and n_resamples >= 1):
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < sample_fraction < 1:
        raise ValueError(f"sample_fraction must be in (0, 1), got {sample_fraction!r}")
    m = min(int(round(sample_fraction * n)), int(max_samples))
    if m < 2:
        raise ValueError(f"subsamples of {m} points are too small (n={n})")
    rng = np.random.default_rng(random_state)
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    jaccard = np.full((n_resamples, k), np.nan)
    for b in range(n_resamples):
        if progress is not None:
            progress(b / n_resamples, f"stability: refit {b + 1}/{n_resamples} on {m} samples")
        rows = np.sort(rng.choice(n, m, replace=False))
        index = rows if isinstance(X, np.ndarray) else torch.as_tensor(rows, device=X.device)
        refit = np.asarray(fit(X[index]))
        if refit.shape != (m,):
            raise ValueError(f"fit returned labels of shape {refit.shape}, expected ({m},)")
        jaccard[b] = jaccard_matches(labels[rows], refit, k)
    if progress is not None:
        progress(1.0, "stability: done")
    present = ~np.isnan(jaccard)
    scores = np.where(present.any(0), np.nansum(jaccard, 0) / np.maximum(present.sum(0), 1),
                      np.nan)
    sizes = np.bincount(labels[labels >= 0], minlength=k).astype(np.float64)
    scored = ~np.isnan(scores)
    score = (float(np.average(scores[scored], weights=sizes[scored])) if scored.any()
             else float("nan"))
    return ClusterStability(scores=scores, score=score, jaccard=jaccard, sample_size=m)


def kmeans_stability(estimator, X, n_resamples=N_RESAMPLES, sample_fraction=SAMPLE_FRACTION,
                     max_samples=MAX_SAMPLES, n_init=None, random_state=None, progress=None):
    """:func:`cluster_stability` of a fitted :class:`~clustering.GeneralizedKMeans`
    on the X it was fitted on: each refit is a copy of the estimator with its
    loss and fitted ``loss_param_`` (not estimated again), k-means++ seeding (an
    ``init`` array would warm start it), a new seed and ``n_init`` restarts
    (default: the estimator's, at most ``REFIT_RESTARTS``)."""
    if not hasattr(estimator, "labels_"):
        raise ValueError("the estimator is not fitted; call fit(X) first")
    if n_init is None:
        n_init = min(int(estimator.n_init), REFIT_RESTARTS)
    seeds = np.random.default_rng(random_state)
    params = dict(estimator.get_params(), loss_param=estimator.loss_param_, init="k-means++",
                  n_init=n_init, verbose=False)

    def fit(X_sub):
        seed = int(seeds.integers(2**31 - 1))
        return GeneralizedKMeans(**dict(params, random_state=seed)).fit(X_sub).labels_

    return cluster_stability(X, estimator.labels_, fit, n_resamples, sample_fraction, max_samples,
                             random_state=seeds.integers(2**31 - 1), progress=progress)


def method_stability(method, X, labels, k, params, fitted_params=None, max_samples=MAX_SAMPLES, progress=None):
    """:func:`cluster_stability` of a fit of a registered clustering ``method``
    (:mod:`clustering.engine.methods`) on ``X``: each refit runs the method
    from scratch with ``params``, the fit's own data-driven parameters
    (``fitted_params``, e.g. its ``loss_param``), at most ``REFIT_RESTARTS``
    restarts and a new seed drawn from ``params["random_state"]``, on
    subsamples of at most ``max_samples`` rows."""
    refit = dict(params, **{n: v for n, v in (fitted_params or {}).items() if n == "loss_param"})
    if "n_init" in refit:
        refit["n_init"] = min(int(refit["n_init"]), REFIT_RESTARTS)
    seeds = np.random.default_rng(params.get("random_state"))

    def fit(X_sub):
        seeded = dict(refit, random_state=int(seeds.integers(2**31 - 1))) if "random_state" in refit else refit
        return method.fit(X_sub, k, seeded).labels

    return cluster_stability(X, labels, fit, max_samples=max_samples, random_state=int(seeds.integers(2**31 - 1)),
                             progress=progress)
