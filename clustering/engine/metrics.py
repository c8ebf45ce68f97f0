"""Clustering quality metrics on plain arrays (numpy / scipy / scikit-learn;
no FiftyOne).

* :func:`silhouette_samples` / :func:`silhouette_score`: the silhouette of a
  subset of points, each computed against *all* points (chunked, so memory is
  ``O(chunk * n)``). A random subset therefore gives an unbiased estimate of the
  full-data silhouette, unlike subsampling both sides, whose within/between
  distances are biased when clusters are small relative to the sample.
* :func:`find_knee`: the knee of an elbow curve (Kneedle: the largest gap
  between the curve and its chord, in coordinates normalized to [0, 1]).
* :func:`contingency`, :func:`match_labels` (Hungarian matching),
  :func:`matched_accuracy`, :func:`purity`, :func:`label_agreement`: comparing
  a clustering with ground truth or with another clustering.
"""

import numpy as np

METRICS = ("euclidean", "sqeuclidean", "cosine")
_CHUNK_ELEMENTS = 1 << 22  # distance-matrix entries per chunk (32 MiB in float64)


# ---------------------------------------------------------------------------
# silhouette


def _encode(labels):
    """(codes 0..k-1, unique labels) of a 1-d label array."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d; got shape {labels.shape}")
    uniq, codes = np.unique(labels, return_inverse=True)
    return codes.reshape(-1), uniq


def _check_metric(metric):
    if metric not in METRICS:
        raise ValueError(f"Unknown metric '{metric}'; choose one of {METRICS}")


def _distances(A, B, sq_a, sq_b, metric):
    """(len(A), len(B)) distances; A and B already normalized for cosine."""
    G = A @ B.T
    if metric == "cosine":
        return np.clip(1.0 - G, 0.0, 2.0)
    D = sq_a[:, None] + sq_b[None, :] - 2.0 * G
    np.maximum(D, 0.0, out=D)
    if metric == "euclidean":
        np.sqrt(D, out=D)
    return D


def silhouette_samples(X, labels, indices=None, metric="euclidean", chunk_size=None):
    """Silhouette coefficient of the points ``indices`` (default: all points),
    with each point's mean intra-cluster distance ``a`` and nearest-other-cluster
    mean distance ``b`` computed against **all** ``len(X)`` points.

    Equals ``sklearn.metrics.silhouette_samples(X, labels, metric=metric)[indices]``
    (points alone in their cluster get 0, as in scikit-learn).

    Args:
        X: (n, d) features
        labels: n cluster labels (any sortable values; at least 2 distinct, at
            most n - 1)
        indices: optional indices of the points to score
        metric: ``"euclidean"`` (default), ``"sqeuclidean"`` or ``"cosine"``
        chunk_size: rows of the distance matrix computed at once (default: about
            4M entries per chunk)

    Returns:
        a float64 array of ``len(indices)`` silhouettes in [-1, 1]
    """
    _check_metric(metric)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-d; got shape {X.shape}")
    codes, uniq = _encode(labels)
    n = len(X)
    if len(codes) != n:
        raise ValueError(f"{len(codes)} labels for {n} points")
    k = len(uniq)
    if not 2 <= k <= n - 1:
        raise ValueError(
            f"The silhouette needs 2 <= number of clusters <= n_samples - 1; got "
            f"{k} cluster(s) for {n} points"
        )
    indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise ValueError("indices out of range")

    if metric == "cosine":
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-300)
        sq = None
    else:
        sq = np.einsum("ij,ij->i", X, X)

    # columns sorted by cluster so per-cluster sums are one reduceat per chunk
    order = np.argsort(codes, kind="stable")
    Xs = X[order]
    sq_s = None if sq is None else sq[order]
    sizes = np.bincount(codes, minlength=k)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)

    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(n, 1))
    out = np.empty(len(indices), dtype=np.float64)
    for lo in range(0, len(indices), chunk_size):
        idx = indices[lo : lo + chunk_size]
        sq_i = None if sq is None else sq[idx]
        D = _distances(X[idx], Xs, sq_i, sq_s, metric)
        rows = np.arange(len(idx))
        D[rows, position[idx]] = 0.0  # a point's distance to itself, without round-off
        sums = np.add.reduceat(D, starts, axis=1)  # (c, k) per-cluster sums
        own = codes[idx]
        own_size = sizes[own]
        a = sums[rows, own] / np.maximum(own_size - 1, 1)
        means = sums / sizes[None, :]
        means[rows, own] = np.inf
        b = means.min(axis=1)
        denom = np.maximum(a, b)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = (b - a) / denom
        s = np.nan_to_num(s)
        s[own_size <= 1] = 0.0
        out[lo : lo + len(idx)] = s
    return out


def sample_indices(n, sample_size, random_state=None):
    """Sorted indices of a uniform random sample of ``sample_size`` of ``n``
    points (all points when ``sample_size`` is None or >= n)."""
    if sample_size is None or sample_size >= n:
        return np.arange(n)
    if sample_size < 1:
        raise ValueError(f"sample_size must be >= 1; got {sample_size}")
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=int(sample_size), replace=False))


def stratified_indices(labels, sample_size, min_per_cluster=10, random_state=None):
    """Indices of a sample drawn per cluster: proportional to cluster size, with
    at least ``min(size, min_per_cluster)`` points of every cluster. Returns all
    points when ``sample_size`` is None or >= n. Weight each cluster's mean by
    its size to estimate the overall silhouette without bias."""
    codes, _ = _encode(labels)
    n = len(codes)
    if sample_size is None or sample_size >= n:
        return np.arange(n)
    rng = np.random.default_rng(random_state)
    sizes = np.bincount(codes)
    quota = np.maximum(np.round(sizes * sample_size / n).astype(int), np.minimum(sizes, min_per_cluster))
    quota = np.minimum(quota, sizes)
    picked = [
        rng.choice(np.flatnonzero(codes == c), size=int(q), replace=False)
        for c, q in enumerate(quota)
        if q > 0
    ]
    return np.sort(np.concatenate(picked))


def silhouette_score(X, labels, sample_size=None, random_state=None, metric="euclidean"):
    """Mean silhouette. With ``sample_size`` < n, the mean over a uniform random
    sample of points whose silhouettes are computed against all points (an
    unbiased estimate of the full mean; scikit-learn's ``sample_size`` instead
    subsamples the points *and* the reference set)."""
    idx = sample_indices(len(X), sample_size, random_state)
    return float(np.mean(silhouette_samples(X, labels, idx, metric=metric)))


def per_cluster_silhouette(values, labels):
    """Per-cluster summaries of silhouette ``values`` of points labeled ``labels``:
    list of dicts with ``cluster``, ``count``, ``mean``, ``min``, ``max``,
    ``num_negative``."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels)
    rows = []
    for c in np.unique(labels):
        v = values[labels == c]
        rows.append(
            {
                "cluster": c.item() if hasattr(c, "item") else c,
                "count": int(len(v)),
                "mean": float(v.mean()),
                "min": float(v.min()),
                "max": float(v.max()),
                "num_negative": int((v < 0).sum()),
            }
        )
    return rows


# ---------------------------------------------------------------------------
# other internal indices


def davies_bouldin(X, labels):
    """Davies-Bouldin index (lower is better), Euclidean."""
    from sklearn.metrics import davies_bouldin_score

    return float(davies_bouldin_score(X, labels))


def calinski_harabasz(X, labels):
    """Calinski-Harabasz index (higher is better)."""
    from sklearn.metrics import calinski_harabasz_score

    return float(calinski_harabasz_score(X, labels))


# ---------------------------------------------------------------------------
# knee / elbow


def find_knee(x, y, direction="decreasing", curve="convex", min_strength=0.0):
    """Knee of a curve by the Kneedle criterion.

    Both axes are rescaled to [0, 1]; the knee is the point farthest from the
    chord joining the first and last points, on the side the curve bends to
    (below the chord for convex curves, above for concave ones). For a
    decreasing, convex elbow curve (objective vs k) this is where adding
    clusters stops paying off.

    Args:
        x, y: the curve (x increasing)
        direction: ``"decreasing"`` or ``"increasing"``
        curve: ``"convex"`` or ``"concave"``
        min_strength: the smallest normalized gap (0..1) accepted as a knee

    Returns:
        ``(index, strength)``: the knee's index into ``x`` (None when the curve
        has fewer than 3 points, is flat, or never bends by ``min_strength``)
        and the normalized gap at that point
    """
    if direction not in ("decreasing", "increasing"):
        raise ValueError(f"direction must be 'decreasing' or 'increasing'; got {direction!r}")
    if curve not in ("convex", "concave"):
        raise ValueError(f"curve must be 'convex' or 'concave'; got {curve!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be 1-d arrays of the same length")
    if len(x) < 3 or not np.all(np.isfinite(y)):
        return None, 0.0
    if np.any(np.diff(x) <= 0):
        raise ValueError("x must be strictly increasing")
    xr, yr = x[-1] - x[0], y.max() - y.min()
    if yr <= 0:
        return None, 0.0
    xn = (x - x[0]) / xr
    yn = (y - y.min()) / yr
    # gap between the chord and the curve, positive on the side the curve bends to
    chord = yn[0] + (yn[-1] - yn[0]) * xn
    gap = chord - yn if curve == "convex" else yn - chord
    i = int(np.argmax(gap[1:-1])) + 1
    strength = float(gap[i])
    if strength <= max(min_strength, 1e-12):
        return None, max(strength, 0.0)
    return i, strength


# ---------------------------------------------------------------------------
# comparing labelings


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def contingency(a, b):
    """Contingency table of two labelings of the same points.

    Returns:
        ``(rows, cols, counts)``: the sorted distinct labels of ``a`` and of
        ``b`` (plain Python values) and the int64 count matrix
        ``counts[i, j] = #{a == rows[i] and b == cols[j]}``
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Labelings must be 1-d and of equal length; got {a.shape} and {b.shape}")
    ca, ra = _encode(a)
    cb, rb = _encode(b)
    counts = np.zeros((len(ra), len(rb)), dtype=np.int64)
    np.add.at(counts, (ca, cb), 1)
    return [_plain(v) for v in ra], [_plain(v) for v in rb], counts


def match_labels(a, b):
    """Optimal one-to-one matching of the labels of ``a`` to those of ``b``
    (Hungarian algorithm on the contingency table, maximizing the number of
    points on which matched labels agree). Labels left over when the label
    counts differ stay unmatched.

    Returns:
        dict ``{label of a: label of b}``
    """
    from scipy.optimize import linear_sum_assignment

    rows, cols, counts = contingency(a, b)
    r, c = linear_sum_assignment(-counts)
    return {rows[i]: cols[j] for i, j in zip(r, c)}


def matched_accuracy(y_true, y_pred):
    """Clustering accuracy: the fraction of points whose cluster, after the
    optimal one-to-one matching of clusters to classes, is their class."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        raise ValueError("No points to evaluate")
    mapping = match_labels(y_pred, y_true)
    hits = sum(int(np.sum((y_pred == p) & (y_true == t))) for p, t in mapping.items())
    return hits / len(y_true)


def label_agreement(a, b):
    """Agreement of two clusterings after optimally matching ``a``'s clusters to
    ``b``'s: ``(mapping, changed)`` where ``changed`` is a boolean mask of the
    points whose matched ``a`` label differs from their ``b`` label (points of
    an unmatched ``a`` cluster count as changed)."""
    a, b = np.asarray(a), np.asarray(b)
    mapping = match_labels(a, b)
    changed = np.ones(len(a), dtype=bool)
    for la, lb in mapping.items():
        changed[(a == la) & (b == lb)] = False
    return mapping, changed


def purity(y_true, y_pred):
    """Per-cluster purity: the share of each cluster's points that belong to
    its most common class.

    Returns:
        ``(overall, rows)``: overall purity (sum of majority counts / n) and per
        cluster dicts ``cluster``, ``size``, ``majority_class``,
        ``majority_count``, ``purity``
    """
    clusters, classes, counts = contingency(y_pred, y_true)
    rows = []
    for i, c in enumerate(clusters):
        j = int(np.argmax(counts[i]))
        size = int(counts[i].sum())
        rows.append(
            {
                "cluster": c,
                "size": size,
                "majority_class": classes[j],
                "majority_count": int(counts[i, j]),
                "purity": float(counts[i, j] / size),
            }
        )
    overall = float(counts.max(axis=1).sum() / counts.sum()) if counts.size else float("nan")
    return overall, rows


def nmi(a, b):
    """Normalized mutual information (arithmetic normalization, scikit-learn's default)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(a, b))


def ari(a, b):
    """Adjusted Rand index."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def scores(y_true, y_pred):
    """A clustering scored against classes: ``nmi``, ``ari``, ``accuracy``
    (after the optimal matching of clusters to classes), ``purity`` and
    ``per_cluster`` (:func:`purity`'s rows)."""
    overall, per_cluster = purity(y_true, y_pred)
    return {
        "nmi": nmi(y_true, y_pred),
        "ari": ari(y_true, y_pred),
        "accuracy": float(matched_accuracy(y_true, y_pred)),
        "purity": overall,
        "per_cluster": per_cluster,
    }
