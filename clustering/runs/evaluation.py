"""Evaluating, comparing and visualizing clustering runs on FiftyOne collections.

Every function returns a plain JSON-serializable dict (so results pass through
operators unchanged); :mod:`clustering.plots` turns them into Plotly figures.
The math lives in :mod:`clustering.engine.metrics`.

* :func:`choose_k`: sweep k (on a collection or on an array alone): elbow,
  silhouette, Davies-Bouldin, Calinski-Harabasz, stability and gap statistic,
  which criteria agree, and a recommended k with its reason
* :func:`evaluate_run`: NMI, ARI, Hungarian accuracy and purity vs ground truth
* :func:`compare_runs`: ARI, NMI, contingency table and changed samples of two runs
* :func:`silhouette_analysis` / :func:`plot_silhouette`: per-cluster silhouettes
* :func:`visualize_run`: a FiftyOne Brain 2-d map (UMAP / t-SNE / PCA) of a
  run's features, for the App's Embeddings panel colored by the run's cluster field
"""

from urllib.parse import quote

import numpy as np

from ..features import transform as cf
from ..engine import metrics as cm
from ..engine import selection as sel
from . import storage
from ..engine.losses import get_loss
from ..engine.selection import _float
from ..engine.methods import get_method
from ..progress import progress_or_bar, scaled

DEFAULT_SAMPLE_SIZE = 2000
VISUALIZATION_METHODS = ("umap", "tsne", "pca")


def _results(samples, run_key):
    from . import records as cr
    from .compute import load_clustering_results

    results = load_clustering_results(samples._root_dataset, run_key)
    cr.require_sample_run(results.config, run_key, "judging and mapping")
    return results


def _run_labels(samples, run_key):
    """(results, ids, labels): the run's clustered samples that are in
    ``samples``, in the run's order, and their labels (-1 = noise)."""
    results = _results(samples, run_key)
    ids = list(results.sample_ids)
    labels = np.asarray(results.labels, dtype=np.int64)
    if samples is not samples._root_dataset:
        present = set(samples.values("id"))
        keep = np.fromiter((i in present for i in ids), dtype=bool, count=len(ids))
        ids = [i for i, k in zip(ids, keep) if k]
        labels = labels[keep]
    return results, ids, labels


def _silhouette_metric(loss, metric):
    if metric is not None:
        cm._check_metric(metric)
        return metric
    return "cosine" if loss == "cosine" else "euclidean"


# ---------------------------------------------------------------------------
# run features


def run_features(samples, run_key, embeddings=None):
    """The feature matrix a run clustered (its embeddings, normalized / reduced
    as the run did, :class:`clustering.runs.model.RunModel`), for the run's
    samples that are in ``samples``.

    Args:
        embeddings: for a run computed from an array (not a field), the same
            (n, d) array, aligned with the run's ``sample_ids``

    Returns:
        ``(ids, X, labels, note)``
    """
    from .model import RunModel

    results = _results(samples, run_key)
    config = results.config
    model = RunModel.of(results)
    run_ids = list(results.sample_ids)
    if embeddings is not None:
        X = np.asarray(embeddings, dtype=np.float32)
        if X.ndim != 2 or len(X) != len(run_ids):
            raise ValueError(
                f"embeddings must be an (n, d) array aligned with the run's {len(run_ids)} "
                f"sample_ids; got shape {X.shape}"
            )
        # a UMAP of an array run is fitted again on every row (its own fit is not recorded)
        stored = model.transform.reduction != "umap" and (
            model.transform.reduction == "none" or model.transform.pca_components_ is not None
        )
        X = model.transform.transform(X) if stored else model.transform.fit_transform(X)
        source = "the given array"
    else:
        if not config.embeddings_field:
            raise ValueError(
                f"Run '{run_key}' was clustered on an embeddings array passed in Python, "
                "not on a sample field, so its features cannot be reloaded: pass the same "
                "array as embeddings=, or store it in a vector field and recompute the run "
                "with embeddings=<field>"
            )
        X = model.run_features(samples._root_dataset, run_ids, "this evaluation")
        source = f"field '{config.embeddings_field}'"
    reduction = config.reduction or "none"
    steps = (["L2-normalized"] if config.normalize else []) + (
        [f"{reduction.upper()} to {X.shape[1]} dims"] if reduction != "none" else []
    )
    note = f"features: {source}" + (f", {', '.join(steps)} as in the run" if steps else "")
    labels = np.asarray(results.labels, dtype=np.int64)
    if samples is not samples._root_dataset:
        present = set(samples.values("id"))
        keep = np.fromiter((i in present for i in run_ids), dtype=bool, count=len(run_ids))
        run_ids = [i for i, k in zip(run_ids, keep) if k]
        X, labels = X[keep], labels[keep]
    return run_ids, X, labels, note


# ---------------------------------------------------------------------------
# choose k


def _sweep_params(method_obj, loss, loss_param, random_state, method_params):
    params = dict(method_params)
    if "loss" in method_obj.defaults:
        params["loss"] = loss or "squared"
        if loss_param is not None:
            params["loss_param"] = loss_param
    elif loss not in (None, "squared"):
        raise ValueError(
            f"Method '{method_obj.name}' has no loss option (it minimizes squared distances); "
            "use method='generalized_kmeans' to sweep k with another loss"
        )
    if random_state is not None and "random_state" in method_obj.defaults:
        params["random_state"] = random_state
    return method_obj.resolve_params({k: v for k, v in params.items() if v is not None})


def _array_features(embeddings):
    """(X, missing, source) of an embeddings array given without a collection."""
    if embeddings is None or isinstance(embeddings, str):
        raise ValueError(
            "Without a collection (samples=None), embeddings must be an (n, d) array; "
            f"got {embeddings!r}"
        )
    X = np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings)
    if X.ndim != 2:
        raise ValueError(f"An embeddings array must be 2-D (n, d); got shape {X.shape}")
    return cf.as_matrix(list(X), "the embeddings array"), [], {"source": "array"}


def choose_k(
    samples,
    embeddings,
    loss="squared",
    k_min=2,
    k_max=10,
    method="generalized_kmeans",
    normalize=False,
    reduction="none",
    n_components=None,
    sample_size=DEFAULT_SAMPLE_SIZE,
    random_state=51,
    loss_param=None,
    silhouette_metric=None,
    progress=None,
    **method_params,
):
    """Clusters the features for every k in ``[k_min, k_max]``, scores each k by
    six criteria and recommends one (:func:`clustering.engine.selection.recommend_k`).

    Per k: the objective (sum of per-sample losses, for the elbow), the mean
    silhouette, the Davies-Bouldin and Calinski-Harabasz indices, the stability
    under subsampling and the gap statistic (see :mod:`clustering.engine.selection`).
    The silhouette is exact for ``n <= sample_size``; otherwise it is the mean
    over the same random ``sample_size`` points for every k, each scored against
    all ``n`` points. For losses with a data-driven parameter (Huber delta,
    correntropy sigma, ...) the value chosen at ``k_min`` is kept for every k,
    so that the objectives are comparable.

    Args:
        samples: a FiftyOne dataset or view, or None with an embeddings array
            (no database needed)
        embeddings: a vector field name, or an (n, d) array (aligned with
            ``samples`` when given); an array gives the same result as the
            same vectors in a field
        loss, loss_param: the generalized k-means loss (``method="generalized_kmeans"``)
        k_min, k_max: the range of k (``1 <= k_min <= k_max <= n - 1``; metrics
            other than the objective need k >= 2)
        method: a clustering method that takes k (see :func:`clustering.available_methods`)
        normalize, reduction, n_components: preprocessing, as in ``compute_clusters``
        sample_size: points whose silhouette is computed (None = all)
        random_state: seed of the fits, the silhouette sample, the subsamples
            and the gap's reference sets
        silhouette_metric: ``"euclidean"`` / ``"sqeuclidean"`` / ``"cosine"``
            (default: cosine for the cosine loss, else euclidean)
        progress: None or True (a progress bar), False (silent), or a callable
            ``progress(fraction, message)``
        **method_params: further method parameters (``n_init``, ``max_iter``, ...)

    Returns:
        a dict with ``per_k`` (list of per-k dicts), ``metrics`` (the same as
        columns), ``best`` (k picked by each criterion), ``agree`` (the criteria
        that pick the recommended k), ``recommended_k`` and ``reason``, plus
        what was run
    """
    method_obj = get_method(method)
    if not method_obj.needs_k:
        raise ValueError(f"Method '{method}' chooses its own number of clusters; choose_k sweeps k")
    for name, v in (("k_min", k_min), ("k_max", k_max)):
        if isinstance(v, bool) or int(v) != v:
            raise ValueError(f"{name} must be an integer; got {v!r}")
    k_min, k_max = int(k_min), int(k_max)
    if not 1 <= k_min <= k_max:
        raise ValueError(f"Need 1 <= k_min <= k_max; got k_min={k_min}, k_max={k_max}")
    if k_max - k_min + 1 < 3:
        raise ValueError("Sweep at least 3 values of k (k_max >= k_min + 2) to find an elbow")
    params = _sweep_params(method_obj, loss, loss_param, random_state, method_params)
    metric = _silhouette_metric(params.get("loss"), silhouette_metric)

    with progress_or_bar(progress, "Choosing k") as report:
        report(0.0, "loading features")
        if samples is None:
            X, missing, source = _array_features(embeddings)
        else:
            from .compute import read_features  # FiftyOne only where there is a collection

            vectors, source = read_features(samples, embeddings)
            X, missing = vectors.X, vectors.missing_ids
        n = len(X)
        if k_max > n - 1:
            raise ValueError(f"k_max={k_max} must be at most n - 1 = {n - 1} (samples with embeddings)")
        X, feature_info = cf.prepare_features(X, normalize, reduction, n_components, random_state=random_state)

        def fit(data, k, progress, single):
            nonlocal params
            restarts = {"n_init": 1} if single and "n_init" in params else {}
            out = method_obj.fit(data, k, dict(params, **restarts), progress=progress)
            if params.get("loss_param") is None and out.params.get("loss_param") is not None:
                params = dict(params, loss_param=out.params["loss_param"])  # fixed for every k
            return out

        ks = list(range(k_min, k_max + 1))
        robust = "loss" in params and get_loss(params["loss"]).robust
        per_k, metrics = sel.sweep_k(X, ks, fit, metric=metric, sample_size=sample_size,
                                     random_state=random_state, robust=robust,
                                     progress=scaled(report, 0.05, 1.0))
    recommended, reason, best = sel.recommend_k(ks, metrics)
    _, strength = sel.best_per_criterion(ks, metrics)
    return {
        "method": method,
        "loss": params.get("loss"),
        "loss_param": _float(params["loss_param"]) if params.get("loss_param") is not None else None,
        "params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None)))},
        "embeddings_field": source.get("embeddings_field"),
        "num_samples": int(n),
        "num_missing_embeddings": len(missing),
        "features": feature_info,
        "silhouette_metric": metric,
        "silhouette_sample_size": int(min(n, sample_size or n)),
        "silhouette_exact": bool(sample_size is None or sample_size >= n),
        "per_k": per_k,
        "metrics": metrics,
        "best": best,
        "agree": [name for name, k in best.items() if k == recommended and k is not None],
        "knee_strength": float(strength),
        "recommended_k": recommended,
        "reason": reason,
    }


# ---------------------------------------------------------------------------
# ground truth


def _gt_path(samples, gt_field):
    import fiftyone as fo

    schema = samples.get_field_schema(flat=True)
    if gt_field not in schema:
        raise ValueError(f"Ground-truth field '{gt_field}' does not exist on this collection")
    ftype = schema[gt_field]
    if isinstance(ftype, fo.EmbeddedDocumentField) and issubclass(ftype.document_type, fo.Classification):
        return f"{gt_field}.label"
    if isinstance(ftype, (fo.StringField, fo.IntField, fo.BooleanField)):
        return gt_field
    raise ValueError(
        f"Field '{gt_field}' has type {type(ftype).__name__}; ground truth must be a "
        "Classification field or a string (or int) field"
    )


def gt_fields(samples):
    """Fields usable as ground truth: Classification and string/int fields."""
    import fiftyone as fo

    out = []
    for name, ftype in samples.get_field_schema(flat=True).items():
        if name in ("id", "filepath") or name.startswith("_") or "." in name:
            continue
        if isinstance(ftype, fo.EmbeddedDocumentField) and issubclass(ftype.document_type, fo.Classification):
            out.append(name)
        elif isinstance(ftype, (fo.StringField, fo.IntField)) and not isinstance(ftype, fo.ObjectIdField):
            out.append(name)
    return sorted(out)


def _record_evaluated_field(dataset, run_key, config, gt_field):
    """Records in the run's config the ground-truth field it was last evaluated
    against (``evaluated_gt_field``): the Clusters panel scores the run against
    it when it opens the run."""
    if config.evaluated_gt_field != gt_field:
        config.evaluated_gt_field = gt_field
        dataset.update_run_config(run_key, config)


def evaluate_run(samples, run_key, gt_field="ground_truth"):
    """Scores a run against ground-truth classes.

    Samples without a cluster label (not clustered, e.g. no embeddings), HDBSCAN
    noise (-1) and samples without ground truth are excluded; the counts are
    reported in ``excluded`` and ``note``.

    Args:
        samples: a dataset or view (only its samples are evaluated)
        run_key: a clustering run
        gt_field: a ``Classification`` field or a string / int field

    The run's config records ``gt_field`` as ``evaluated_gt_field`` (the
    Clusters panel then shows these scores when it opens the run).

    Returns:
        a dict with ``nmi``, ``ari``, ``accuracy`` (after the optimal Hungarian
        matching of clusters to classes; clusters left unmatched when k differs
        from the number of classes count as errors), ``purity``, ``per_cluster``
        (size, majority class, purity, matched class, name), ``contingency``
        (clusters x classes), ``mapping``, ``excluded`` and ``note``
    """
    path = _gt_path(samples, gt_field)
    results, ids, labels = _run_labels(samples, run_key)
    all_ids, gt_values = samples.values(["id", path])
    gt = dict(zip(all_ids, gt_values))
    clustered = {i for i in ids}
    num_unclustered = sum(1 for i in all_ids if i not in clustered)
    noise = labels < 0
    y = [gt.get(i) for i in ids]
    has_gt = np.array([v is not None and v != "" for v in y], dtype=bool)
    use = ~noise & has_gt
    excluded = {
        "no_cluster_label": int(num_unclustered),
        "noise": int(noise.sum()),
        "no_ground_truth": int((~noise & ~has_gt).sum()),
    }
    n_eval = int(use.sum())
    total = len(all_ids)
    note = f"Evaluated {n_eval} of {total} samples"
    parts = [
        f"{v} {what}"
        for v, what in (
            (excluded["no_cluster_label"], "without a cluster label"),
            (excluded["noise"], "labeled noise (-1)"),
            (excluded["no_ground_truth"], f"without ground truth in '{gt_field}'"),
        )
        if v
    ]
    note += f"; excluded {total - n_eval}: " + ", ".join(parts) if parts else "; none excluded"
    if n_eval == 0:
        raise ValueError(f"No sample can be evaluated: {note}")

    y_pred = labels[use]
    y_true = np.array([v for v, u in zip(y, use) if u])
    scores = cm.scores(y_true, y_pred)
    rows = scores.pop("per_cluster")
    mapping = cm.match_labels(y_pred, y_true)
    names = getattr(results, "names", None) or {}
    for r in rows:
        r["matched_class"] = mapping.get(r["cluster"])
        r["name"] = names.get(str(r["cluster"]))
    clusters, classes, counts = cm.contingency(y_pred, y_true)
    _record_evaluated_field(samples._root_dataset, run_key, results.config, gt_field)
    return {
        "run_key": run_key,
        "gt_field": gt_field,
        "num_samples": int(total),
        "num_evaluated": n_eval,
        "excluded": excluded,
        "note": note,
        "num_clusters": len(clusters),
        "num_classes": len(classes),
        **scores,
        "per_cluster": rows,
        "mapping": {str(c): t for c, t in mapping.items()},
        "contingency": {"rows": clusters, "cols": classes, "counts": counts.tolist()},
    }


def compare_runs(samples, run_key_a, run_key_b):
    """Compares two runs on the samples both clustered (noise excluded).

    Returns:
        a dict with ``ari``, ``nmi``, ``contingency`` (rows: clusters of run a,
        cols: clusters of run b), ``mapping`` (run a cluster -> run b cluster,
        optimal Hungarian matching), ``changed_ids`` (samples whose matched
        cluster differs between the runs), ``num_changed``, ``agreement``, the
        counts of samples only in one run / noise, and the clusters' identity
        (:func:`clustering.runs.identity.match_clusters`): ``matches`` (pairs with
        their Jaccard similarity and shared samples), ``vanished`` (clusters of
        run a without a match) and ``new`` (of run b)
    """
    from .identity import match_clusters

    if run_key_a == run_key_b:
        raise ValueError("Choose two different runs to compare")
    _, ids_a, la = _run_labels(samples, run_key_a)
    _, ids_b, lb = _run_labels(samples, run_key_b)
    map_b = dict(zip(ids_b, lb.tolist()))
    common = [i for i in ids_a if i in map_b]
    set_a = set(ids_a)
    la_c = np.array([l for i, l in zip(ids_a, la.tolist()) if i in map_b], dtype=np.int64)
    lb_c = np.array([map_b[i] for i in common], dtype=np.int64)
    noise = (la_c < 0) | (lb_c < 0)
    use = ~noise
    if use.sum() == 0:
        raise ValueError(f"Runs '{run_key_a}' and '{run_key_b}' have no clustered sample in common")
    ids_u = [i for i, u in zip(common, use) if u]
    a, b = la_c[use], lb_c[use]
    rows, cols, counts = cm.contingency(a, b)
    mapping, changed = cm.label_agreement(a, b)
    changed_ids = [ids_u[i] for i in np.flatnonzero(changed)]
    identity = match_clusters(ids_a, la, ids_b, lb)
    return {
        "run_key_a": run_key_a,
        "run_key_b": run_key_b,
        "num_compared": int(use.sum()),
        "num_only_a": int(len(ids_a) - len(common)),
        "num_only_b": int(sum(1 for i in ids_b if i not in set_a)),
        "num_noise": int(noise.sum()),
        "ari": cm.ari(a, b),
        "nmi": cm.nmi(a, b),
        "contingency": {"rows": rows, "cols": cols, "counts": counts.tolist()},
        "mapping": {str(k): int(v) for k, v in mapping.items()},
        "num_changed": len(changed_ids),
        "agreement": float(1.0 - len(changed_ids) / use.sum()),
        "changed_ids": changed_ids,
        "matches": identity["matches"],
        "vanished": identity["vanished"],
        "new": identity["new"],
    }


# ---------------------------------------------------------------------------
# silhouette of a run


def silhouette_analysis(samples, run_key, sample_size=DEFAULT_SAMPLE_SIZE, metric=None, embeddings=None, random_state=0, max_values=None):
    """Per-cluster silhouettes of a run, in the feature space it clustered.

    The points of ``samples`` (a dataset or a view) that the run clustered are
    scored, each against **all** of the run's clustered points (so a view gets
    its points' silhouettes within the whole clustering). With more than
    ``sample_size`` such points, a stratified sample (each cluster
    proportionally, at least 20 points each) is scored; the overall mean then
    weights each cluster's mean by its number of points.

    Args:
        sample_size: points scored (None = all)
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"`` (default:
            cosine for the cosine loss, else euclidean)
        embeddings: for a run computed from an array, the same array
        random_state: seed of the sample
        max_values: keep at most this many (evenly spaced, sorted) silhouettes
            per cluster in ``values`` (for plotting); statistics use all

    Returns:
        a dict with ``silhouette`` (overall mean), ``clusters`` (per cluster
        ``cluster``, ``name``, ``size`` (in the run), ``num_points`` (in
        ``samples``), ``num_scored``, ``mean``, ``min``, ``max``,
        ``num_negative``, ``values`` (sorted scored silhouettes)),
        ``below_average`` (clusters whose mean is below the overall mean),
        ``negative_fraction`` and ``note``
    """
    results = _results(samples, run_key)
    root = samples._root_dataset
    ids, X, labels, note = run_features(root, run_key, embeddings=embeddings)
    metric = _silhouette_metric(results.config.loss, metric)
    member = labels >= 0
    Xm, lm = X[member], labels[member]
    if len(np.unique(lm)) < 2:
        raise ValueError(f"Run '{run_key}' has fewer than 2 clusters")
    # the points to score: the collection's clustered samples (all, for a dataset)
    if samples is root:
        candidates = np.arange(len(lm))
    else:
        present = set(samples.values("id"))
        mids = [i for i, m in zip(ids, member) if m]
        candidates = np.flatnonzero([i in present for i in mids])
        if not len(candidates):
            raise ValueError(f"No sample of this collection is in a cluster of run '{run_key}'")
    idx = candidates[cm.stratified_indices(lm[candidates], sample_size, min_per_cluster=20, random_state=random_state)]
    values = cm.silhouette_samples(Xm, lm, idx, metric=metric)  # against all the run's points
    scored_labels = lm[idx]
    names = getattr(results, "names", None) or {}
    sizes = np.bincount(lm)
    counts = np.bincount(lm[candidates], minlength=len(sizes))
    clusters = []
    for row in cm.per_cluster_silhouette(values, scored_labels):
        c = int(row["cluster"])
        v = np.sort(values[scored_labels == c])[::-1]
        if max_values and len(v) > max_values:
            v = v[np.linspace(0, len(v) - 1, max_values).round().astype(int)]
        clusters.append(
            dict(
                row,
                cluster=c,
                name=names.get(str(c)),
                size=int(sizes[c]),
                num_points=int(counts[c]),
                num_scored=row.pop("count"),
                values=np.round(v, 4).tolist(),
            )
        )
    # per-cluster means weighted by the cluster's points in the collection
    weights = np.array([c["num_points"] for c in clusters], dtype=float)
    overall = float(np.sum(weights * [c["mean"] for c in clusters]) / weights.sum())
    neg = float(sum(c["num_points"] * c["num_negative"] / c["num_scored"] for c in clusters) / weights.sum())
    exact = len(idx) == len(candidates)
    what = "all" if samples is root else "the collection's"
    note += (
        f"; {metric} silhouette of {what} {len(candidates)} points"
        if exact
        else f"; {metric} silhouette of a stratified sample of {len(idx)} of {what} {len(candidates)} points"
    )
    if samples is not root:
        note += f", each against all {len(lm)} clustered points of the run"
    elif not exact:
        note += ", each against all points"
    if (~member).any():
        note += f"; {int((~member).sum())} noise points excluded"
    return {
        "run_key": run_key,
        "metric": metric,
        "silhouette": overall,
        "num_points": int(len(candidates)),
        "num_clustered": int(len(lm)),
        "num_scored": int(len(idx)),
        "exact": bool(exact),
        "negative_fraction": neg,
        "below_average": [c["cluster"] for c in clusters if c["mean"] < overall],
        "clusters": clusters,
        "note": note,
    }


def plot_silhouette(samples, run_key, **kwargs):
    """:func:`silhouette_analysis` plus ``figure``: the per-cluster silhouette
    ("knife") plot as a Plotly figure dict (``plotly.graph_objects.Figure(d["figure"])``)."""
    from .. import plots

    analysis = silhouette_analysis(samples, run_key, **kwargs)
    analysis["figure"] = plots.silhouette_knife_figure(analysis)
    return analysis


# ---------------------------------------------------------------------------
# 2-d map


def run_visualization(samples, run_key, method="umap", brain_key=None, num_dims=2, features="embeddings", overwrite=False, random_state=51, progress=None, **kwargs):
    """:func:`visualize_run`'s summary and the FiftyOne Brain visualization
    results themselves (the points, for a chart)."""
    import fiftyone.brain as fob

    from . import records as cr

    if method not in VISUALIZATION_METHODS:
        raise ValueError(f"Unknown method '{method}'; choose one of {VISUALIZATION_METHODS}")
    if features not in ("embeddings", "run"):
        raise ValueError("features must be 'embeddings' (the run's embeddings field) or 'run' (the run's preprocessed features)")
    config = cr.get_clustering_run_config(samples._root_dataset, run_key)
    cr.require_sample_run(config, run_key, "visualize_run")
    label_field = config.label_field
    field = config.embeddings_field
    if not field:
        raise ValueError(
            f"Run '{run_key}' was clustered on an embeddings array passed in Python, not on a "
            "sample field, so there is no embeddings field to visualize: store the array in a "
            "vector field (dataset.set_values(field, ...)) and recompute the run with "
            "embeddings=<field>, or call fiftyone.brain.compute_visualization(samples, "
            "embeddings=<array>) yourself"
        )
    brain_key = brain_key or f"{run_key}_{method}"
    if not brain_key.isidentifier():
        raise ValueError(f"Invalid brain key {brain_key!r}: use a Python identifier")
    dataset = samples._root_dataset
    if brain_key in dataset.list_brain_runs():
        if not overwrite:
            raise ValueError(f"Brain key '{brain_key}' exists; pass overwrite=True or choose another brain_key")
        dataset.delete_brain_run(brain_key)

    with progress_or_bar(progress, f"Visualizing '{run_key}'") as report:
        report(0.05, f"{method.upper()} of '{field}'")
        view = samples.exists(label_field).exists(field)
        if not len(view):
            raise ValueError(f"No sample of this collection has both '{label_field}' and '{field}'")
        normalize = bool(config.normalize)
        reduction = config.reduction or "none"
        info = {}
        params = dict(kwargs)
        params.setdefault("seed", random_state)
        if features == "run":
            ids, X, _, note = run_features(view, run_key)
            order = {i: r for r, i in enumerate(ids)}
            X = X[[order[i] for i in view.values("id")]]
            embeddings = X
        else:
            embeddings = field
            note = f"embeddings field '{field}'"
            if normalize and method in ("umap", "tsne"):
                params.setdefault("metric", "cosine")
                note += " with cosine distance (the run L2-normalized its embeddings)"
            elif normalize or reduction != "none":
                note += (
                    f" as stored (the run also {'L2-normalized' if normalize else ''}"
                    f"{' and ' if normalize and reduction != 'none' else ''}"
                    f"{reduction.upper() + '-reduced' if reduction != 'none' else ''} them; "
                    "use features='run' to map exactly the clustered features)"
                )
        if method != "pca":
            params.setdefault("verbose", False)
        if method == "tsne":
            dim = embeddings.shape[1] if features == "run" else len(view.first()[field])
            params.setdefault("pca_dims", 50 if min(len(view), dim) > 50 else None)
        results = fob.compute_visualization(
            view, embeddings=embeddings, method=method, brain_key=brain_key, num_dims=num_dims, progress=False, **params
        )
        report(0.9, "saved")
        if method == "pca":
            reducer = getattr(results, "_reducer", None)
            ratio = getattr(reducer, "explained_variance_ratio_", None)
            if ratio is None:
                from sklearn.decomposition import PCA

                X = embeddings if features == "run" else cf.as_matrix(view.values(field))
                ratio = PCA(n_components=num_dims).fit(X).explained_variance_ratio_
            info["explained_variance_ratio"] = [float(r) for r in ratio]
            info["explained_variance_total"] = float(np.sum(ratio))
        report(1.0, "done")
    out = {
        "run_key": run_key,
        "brain_key": brain_key,
        "method": method,
        "num_dims": int(num_dims),
        "num_points": int(len(results.points)),
        "embeddings_field": field,
        "features": features,
        "color_by": label_field,
        "note": note,
        **info,
        "how_to": (
            f"In the App open the Embeddings panel, choose brain key '{brain_key}' and "
            f"color by '{label_field}'"
        ),
    }
    if method == "pca":
        out["how_to"] += (
            f"; the {num_dims} principal components explain "
            f"{100 * info['explained_variance_total']:.1f}% of the variance"
        )
    return out, results


def visualize_run(samples, run_key, method="umap", brain_key=None, num_dims=2, features="embeddings", overwrite=False, random_state=51, progress=None, **kwargs):
    """Computes a FiftyOne Brain visualization (``method`` = ``"umap"``,
    ``"tsne"`` or ``"pca"``) of a run's samples, so the App's Embeddings panel
    can show them colored by the run's cluster field.

    Args:
        samples: a dataset or view (its samples that the run clustered are mapped)
        run_key: a clustering run computed from an embeddings field
        brain_key: the brain key (default ``"{run_key}_{method}"``)
        num_dims: 2 (or 3)
        features: ``"embeddings"`` (the run's embeddings field, linked to the
            field; cosine distance for UMAP / t-SNE if the run normalized) or
            ``"run"`` (the exact features the run clustered, after its
            normalization / reduction, passed as an array)
        overwrite: replace an existing brain run with this key
        random_state: the reducer's seed
        **kwargs: passed to ``fiftyone.brain.compute_visualization``

    Returns:
        a dict with ``brain_key``, ``color_by`` (the cluster field),
        ``num_points``, ``how_to`` and, for PCA, ``explained_variance_ratio``
        (per component) and ``explained_variance_total``
    """
    out, _ = run_visualization(samples, run_key, method=method, brain_key=brain_key, num_dims=num_dims, features=features, overwrite=overwrite, random_state=random_state, progress=progress, **kwargs)
    return out


# ---------------------------------------------------------------------------
# summary


def media_url(filepath):
    """URL under which the FiftyOne App server serves a local media file."""
    return "/media?filepath=" + quote(filepath, safe="")
