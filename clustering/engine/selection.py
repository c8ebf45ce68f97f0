"""Choosing the number of clusters k on plain arrays (numpy / scikit-learn; no
FiftyOne): a sweep over k scored by criteria that fail in different ways, and
the rule that recommends a k from them (:func:`recommend_k`).
:func:`clustering.choose_k` runs the sweep on a collection's or an array's
features.

Criteria, each picking a k (``best``):

* ``elbow``: the knee of the objective curve (Kneedle, :func:`metrics.find_knee`);
* ``silhouette``: the highest mean silhouette;
* ``davies_bouldin``: the lowest Davies-Bouldin index;
* ``calinski_harabasz``: the highest Calinski-Harabasz index;
* ``stability``: the highest mean ARI between the full fit and fits on random
  80% subsamples (of at most ``AUX_SAMPLE_SIZE`` points);
* ``gap``: the gap statistic (Tibshirani, Walther & Hastie 2001): the smallest
  k whose gap log W*_k - log W_k is within one standard error of the next
  one's, with W_k the mean loss of at most ``AUX_SAMPLE_SIZE`` points and W*_k
  that of fits on cluster-free reference data of the same shape
  (:func:`reference_sets`).
"""

import numpy as np

from . import metrics as cm
from .losses import OUTLIER_DISTANCES

CRITERIA = ("elbow", "silhouette", "davies_bouldin", "calinski_harabasz", "stability", "gap")
KNEE_MIN_STRENGTH = 0.05
GAP_SLACK = 1  # see recommend_k
WEAK_SILHOUETTE = 0.25
AUX_SAMPLE_SIZE = 2000  # points of the stability subsamples and gap references
NUM_SUBSAMPLES = 5
SUBSAMPLE_FRACTION = 0.8
NUM_REFERENCES = 5
_TINY = np.finfo(float).tiny


def _float(v):
    return None if v is None or not np.isfinite(v) else float(v)


def reference_sets(X, count, rng):
    """``count`` arrays shaped like X drawn from a Gaussian with X's mean and
    spread along each of its principal axes: data with X's overall shape and
    no clusters (the gap statistic's null reference). Uniform data in the
    principal-axes box (Tibshirani et al.'s choice) is a poor null for image
    embeddings, whose spread is concentrated in few directions and
    heavy-tailed in the others: against it the gap grows with k with no
    plateau."""
    mean = X.mean(axis=0)
    _, spread, axes = np.linalg.svd(X - mean, full_matrices=False)
    spread = spread / np.sqrt(max(len(X) - 1, 1))
    return [((rng.standard_normal((len(X), len(spread))) * spread) @ axes + mean).astype(X.dtype)
            for _ in range(count)]


def _argbest(ks, values, mode):
    pts = [(k, v) for k, v in zip(ks, values) if v is not None]
    if not pts:
        return None
    return (max if mode == "max" else min)(pts, key=lambda p: p[1])[0]


def _gap_choice(ks, gap, se):
    """Tibshirani's rule: the smallest k with gap(k) >= gap(k+1) - se(k+1)."""
    for i in range(len(ks) - 1):
        if None not in (gap[i], gap[i + 1], se[i + 1]) and gap[i] >= gap[i + 1] - se[i + 1]:
            return ks[i]
    return _argbest(ks, gap, "max")


def best_per_criterion(ks, metrics):
    """The k each criterion picks (None where it cannot tell), and the knee's strength."""
    objective = metrics["objective"]
    knee, strength = None, 0.0
    if all(v is not None for v in objective) and objective[-1] < objective[0]:
        i, strength = cm.find_knee(ks, objective, "decreasing", "convex", KNEE_MIN_STRENGTH)
        knee = ks[i] if i is not None else None
    best = {
        "elbow": knee,
        "silhouette": _argbest(ks, metrics["silhouette"], "max"),
        "davies_bouldin": _argbest(ks, metrics["davies_bouldin"], "min"),
        "calinski_harabasz": _argbest(ks, metrics["calinski_harabasz"], "max"),
        "stability": _argbest(ks, metrics["stability"], "max"),
        "gap": _gap_choice(ks, metrics["gap"], metrics["gap_se"]),
    }
    return best, strength


def recommend_k(ks, metrics):
    """The recommended k from a sweep's per-k ``metrics`` (lists aligned with
    ``ks``: ``objective``, ``silhouette``, ``davies_bouldin``,
    ``calinski_harabasz``, ``stability``, ``gap``, ``gap_se``; None where not
    computed).

    The rule follows the quality benchmark (``bench/bench_quality.py`` and
    ``bench/README.md``), where the gap statistic against a Gaussian null of
    the data's shape was the criterion right on the most labelled sets: the
    gap statistic's k, unless it exceeds every other criterion's k by more
    than ``GAP_SLACK`` (the gap's way of failing: on data without a plateau it
    grows towards k_max), in which case the largest k another criterion
    picks. The separation indices and the elbow err low when clusters overlap
    or differ in size, stability errs low at large k: a gap one above them is
    plausible, more is not. Without a gap statistic (too few samples), the k
    most criteria pick (ties: the larger k).

    Returns:
        ``(k, reason, best)``: the k (None when nothing could be scored), why
        (naming the criteria that agree), and the k each criterion picks
    """
    best, _ = best_per_criterion(ks, metrics)
    others = {name: k for name, k in best.items() if name != "gap" and k is not None}
    gap = best["gap"]
    if gap is not None and (not others or gap <= max(others.values()) + GAP_SLACK):
        k, why = gap, f"the gap statistic picks k={gap}"
    elif gap is not None:
        k = max(others.values())
        why = (f"the gap statistic's k={gap} exceeds every other criterion's by more than "
               f"{GAP_SLACK}, so the largest of theirs, k={k}")
    elif others:
        votes = {}
        for kk in others.values():
            votes[kk] = votes.get(kk, 0) + 1
        k = max(votes, key=lambda kk: (votes[kk], kk))
        why = f"k={k} is picked by most criteria (no gap statistic)"
    else:
        return None, "No k could be evaluated (every fit produced fewer than 2 clusters)", best
    agree = [name for name, kk in best.items() if kk == k]
    picks = "; ".join(f"{name} k={kk}" for name, kk in best.items() if kk is not None)
    reason = (f"{why[0].upper()}{why[1:]}; {len(agree)} of {len(best)} criteria pick k={k} "
              f"({', '.join(agree)}). Each criterion: {picks}.")
    silhouette = metrics["silhouette"][ks.index(k)]
    if silhouette is not None and silhouette < WEAK_SILHOUETTE:
        reason += (f" The mean silhouette at k={k} is {silhouette:.3f} (< {WEAK_SILHOUETTE}): the "
                   "cluster structure is weak, so k is a choice rather than a discovery.")
    return k, reason, best


def _outliers(X, centers, labels):
    """Samples farther from their center than ``OUTLIER_DISTANCES`` times the
    median distance (the rule of the robust losses' scale estimates)."""
    distances = np.linalg.norm(X - centers[labels], axis=1)
    return distances > OUTLIER_DISTANCES * np.median(distances)


def _trimmed(X):
    """X without its far samples: those farther from the coordinate-wise median
    than ``OUTLIER_DISTANCES`` times the median such distance."""
    distances = np.linalg.norm(X - np.median(X, axis=0), axis=1)
    return X[distances <= OUTLIER_DISTANCES * np.median(distances)]


def _internal_indices(X, labels, scored, sil_idx, metric):
    """Mean silhouette (of the ``sil_idx`` points, each against all scored
    points), Davies-Bouldin and Calinski-Harabasz of the ``scored`` samples
    (None when they form fewer than 2 clusters or only singletons)."""
    X, labels = X[scored], labels[scored]
    n_clusters = len(np.unique(labels))
    if not 2 <= n_clusters <= len(labels) - 1:
        return {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None}
    position = np.cumsum(scored) - 1
    values = cm.silhouette_samples(X, labels, position[sil_idx[scored[sil_idx]]], metric=metric)
    return {
        "silhouette": float(values.mean()),
        "davies_bouldin": cm.davies_bouldin(X, labels),
        "calinski_harabasz": cm.calinski_harabasz(X, labels),
    }


def sweep_k(X, ks, fit, metric="euclidean", sample_size=2000, random_state=None, robust=False,
            progress=None):
    """Fits every k in ``ks`` with ``fit(X, k, progress, single) -> ClusteringOutput``
    (``single``: one restart is enough, for the subsamples and references) and
    scores it (see the module docstring).

    ``robust`` (a robust loss's sweep): the silhouette, Davies-Bouldin,
    Calinski-Harabasz and stability leave out each fit's outliers, samples
    farther from their center than 3x the median distance, and the gap's
    reference box leaves out the samples far from the data's median, so that
    far outliers, which a robust loss ignores, do not decide k.

    Returns:
        ``(per_k, metrics)``: a dict per k and the same values as columns
    """
    n = len(X)
    rng = np.random.default_rng(random_state)
    sil_idx = cm.sample_indices(n, sample_size, random_state)
    aux = cm.sample_indices(n, AUX_SAMPLE_SIZE, random_state)
    m = len(aux)
    subsamples = [np.sort(rng.choice(m, max(2, int(SUBSAMPLE_FRACTION * m)), replace=False))
                  for _ in range(NUM_SUBSAMPLES)]
    references = reference_sets(_trimmed(X[aux]) if robust else X[aux], NUM_REFERENCES, rng)
    report = progress or (lambda fraction, message="": None)
    per_k = []
    for i, k in enumerate(ks):
        lo, hi = i / len(ks), (i + 1) / len(ks)
        report(lo, f"k={k}")
        out = fit(X, k, lambda f, msg="": report(lo + 0.5 * (hi - lo) * f, f"k={k}: {msg}"), False)
        labels = np.asarray(out.labels, dtype=np.int64)
        assigned = labels >= 0  # noise points (-1) are not a cluster
        scored = assigned & ~_outliers(X, np.asarray(out.centers), labels) if robust else assigned
        row = {
            "k": k,
            "num_clusters": len(np.unique(labels[assigned])),
            "objective": _float(out.objective),
            "cluster_sizes": np.bincount(labels[assigned], minlength=k).tolist(),
        }
        report(lo + 0.5 * (hi - lo), f"k={k}: scoring")
        row.update(_internal_indices(X, labels, scored, sil_idx, metric))
        report(lo + 0.6 * (hi - lo), f"k={k}: stability and gap statistic")
        row["stability"] = row["gap"] = row["gap_se"] = None
        if k < len(subsamples[0]):
            agreement = []
            for sub in subsamples:
                refit = np.asarray(fit(X[aux[sub]], k, None, True).labels)
                keep = scored[aux[sub]]
                agreement.append(cm.ari(refit[keep], labels[aux[sub]][keep]))
            row["stability"] = float(np.mean(agreement))
            losses = np.asarray(out.sample_losses, dtype=np.float64)[aux[scored[aux]]]
            log_w = np.log(max(np.nanmean(losses), _TINY))
            log_ref = [np.log(max(fit(R, k, None, True).objective / len(R), _TINY))
                       for R in references]
            row["gap"] = float(np.mean(log_ref) - log_w)
            row["gap_se"] = float(np.std(log_ref) * np.sqrt(1 + 1 / len(references)))
        per_k.append(row)
    report(1.0, "done")
    cols = ("k", "objective") + CRITERIA[1:] + ("gap_se",)
    metrics = {c: [r[c] for r in per_k] for c in cols}
    return per_k, metrics
