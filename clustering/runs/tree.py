"""Cluster trees: sub-clusters of a run's clusters, level by level.

A level of a tree is a run of its own, one level below its parent run: its
key is ``<top run>_l<level>`` (``clusters_l2``), its config names its
``parent_run``, ``root_run`` and ``level``, and its results map each of its
clusters to its parent cluster (``parents``) and hold the parents' paths
(``parent_paths``). Each sample of a sub-clustered cluster gets, besides the
level's cluster / loss / rank fields, a path string such as ``"7/2"`` in the
level's ``path_field`` (``clusters_l2_path``): the App's sidebar filters it
by value. A level clusters in its parent's feature space (the parent's
features, normalization and reduction) with its parent's method, loss and
loss parameter; its cluster ids are its own (a level is a run: it can be
named, merged among siblings, split, promoted to labels, compared).

- :func:`subcluster`: the sub-clusters of one cluster (k given, or the
  recommendation of :func:`clustering.choose_k` on its members); the parent
  run is unchanged, a cluster sub-clustered again is replaced.
- ``compute_clusters(..., levels=[10, 4])`` (or ``"auto"``): a whole tree in
  one call (:func:`compute_levels`).
- :func:`cluster_tree`: the tree as nested nodes (size, name, path, children).
"""

import time

import numpy as np

from . import records as cr
from . import storage
from . import writer
from ..engine.methods import ClusteringOutput, get_method
from ..engine.stability import MAX_SAMPLES, method_stability
from .model import RunModel

#: the range of k that ``k=None`` ("auto") sweeps for a cluster's sub-clusters
AUTO_K_RANGE = (2, 8)
#: members per sub-cluster below which a cluster is not split further by "auto"
MIN_MEMBERS_PER_CHILD = 10
#: the smallest subsample of a cluster's stability refits in a level
MIN_STABILITY_SAMPLES = 1000


def level_key(run_key, config):
    """The key of the level below run ``run_key``."""
    return f"{config.root_run or run_key}_l{(config.level or 1) + 1}"


def refuse_if_parent(samples, run_key, action):
    """Refuses ``action`` (which changes clusters) on a run with a level below."""
    below = cr.child_runs(samples, run_key)
    if below:
        raise ValueError(
            f"Run '{run_key}' has sub-clusters in run '{below[0]}'; {action} there, or delete "
            f"'{below[0]}' first"
        )


def _paths(dataset, results):
    """{cluster: its path} of a run: its id for a top run, ``parent/id`` below."""
    if results.config.parent_run:
        return writer.tree_paths(results)
    return {c: str(c) for c in results.cluster_ids()}


def _fit_children(dataset, parent, model, cluster, k, features=None, siblings=1):
    """``(member ids, labels (0..m-1), centers, losses, stability scores or
    None)`` of ``cluster``'s sub-clusters, with the run's method, parameters
    and loss (:meth:`clustering.runs.model.RunModel.refit`), scored for
    stability when the run was; ``k=None``: the k that
    :func:`clustering.choose_k` recommends for its members. ``features``: the
    run's features of all its samples, when already read. ``siblings``: the
    clusters sub-clustered together; their stability refits share one run's
    budget of subsampled rows (so a level costs about what the run's scores
    cost), at least ``MIN_STABILITY_SAMPLES`` each."""
    from .evaluation import choose_k

    rows = np.flatnonzero(np.asarray(parent.labels) == cluster)
    members = [parent.sample_ids[i] for i in rows]
    X = features[rows] if features is not None else model.run_features(dataset, members, "subcluster")
    if k is None:
        upper = min(AUTO_K_RANGE[1], len(X) // MIN_MEMBERS_PER_CHILD)
        if upper < AUTO_K_RANGE[0]:
            raise ValueError(f"Cluster {cluster} has {len(X)} members: too few to choose a k for its sub-clusters")
        params = dict(model.method_params)
        sweep = choose_k(None, X, method=model.method, k_min=AUTO_K_RANGE[0], k_max=upper, **params)
        k = sweep["recommended_k"]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= len(X):
        raise ValueError(f"k must be an integer between 2 and the {len(X)} members of cluster {cluster}; got {k!r}")
    local, centers, losses = model.refit(X, k)
    scores = None
    if parent.stability and len(centers) > 1:
        method = get_method(model.method)
        params = method.resolve_params(dict(model.method_params))
        budget = max(MIN_STABILITY_SAMPLES, MAX_SAMPLES // max(1, siblings))
        scores = method_stability(method, X, local, len(centers), params, max_samples=budget).scores
    return members, local, centers, losses, scores


def compute_levels(samples, run_key, levels, progress=None, features=None):
    """The levels below run ``run_key``: for each ``k`` of ``levels`` (an int,
    or None to choose each cluster's k), every cluster of the level above
    sub-clustered; returns the levels' results, top-down. ``features``:
    ``(row ids, their features)`` of the run, when the caller has them (the
    fit that just stored the run); read once per level otherwise."""
    dataset = samples._root_dataset
    out = []
    parent_key = run_key
    for i, k in enumerate(levels):
        report = None if progress is None else (lambda f, m="", i=i: progress((i + f) / len(levels), m))
        parent = writer.latest_results(dataset, parent_key)
        clusters = parent.cluster_ids()
        model = RunModel.of(parent)
        features = _features_in_order(dataset, model, parent.sample_ids, features)
        fits = {c: _fit_children(dataset, parent, model, c, k, features, siblings=len(clusters)) for c in clusters}
        if report is not None:
            report(1.0, f"level {parent.config.level + 1}: {len(clusters)} clusters sub-clustered")
        results = _store_level(dataset, parent_key, parent, fits, overwrite=True)
        out.append(results)
        rows = np.concatenate([np.flatnonzero(np.asarray(parent.labels) == c) for c in clusters])
        features = (storage.id_array(parent.sample_ids)[rows], features[rows])
        parent_key = results.key
    return out


def _features_in_order(dataset, model, ids, known):
    """The run's features of rows ``ids``, in that order: from ``known``
    (``(ids, features)``) when it holds exactly those rows, else read."""
    if known is not None:
        known_ids, X = known
        if len(known_ids) == len(ids) and np.array_equal(storage.id_array(known_ids), storage.id_array(ids)):
            return X
    return model.run_features(dataset, ids, "compute_clusters")


def _store_level(dataset, parent_key, parent, fits, overwrite):
    """Stores the sub-clusters ``fits`` ({parent cluster: fit}) of run
    ``parent_key`` as the level below it (a new run, replacing one)."""
    t_start = time.perf_counter()
    key = level_key(parent_key, parent.config)
    paths = _paths(dataset, parent)
    ids, labels, losses, centers, parents = [], [], [], [], {}
    stability = {}
    for p, (members, local, C, member_losses, scores) in fits.items():
        first = len(centers)
        for j in range(len(C)):
            parents[str(first + j)] = int(p)
            if scores is not None and np.isfinite(scores[j]):
                stability[str(first + j)] = float(scores[j])
        ids += members
        labels.append(local + first)
        losses.append(member_losses)
        centers += list(C)
    out = ClusteringOutput(
        labels=np.concatenate(labels), centers=np.asarray(centers, dtype=np.float32),
        sample_losses=np.concatenate(losses), objective=float(np.sum([np.sum(x) for x in losses])),
    )
    config = _level_config(parent_key, parent.config, key, len(centers), len(ids))
    with writer.claimed(dataset, key, "compute_clusters", allow_interrupted=True) as claim:
        if key in dataset.list_runs() and not overwrite:
            raise ValueError(f"A run with key '{key}' already exists; pass overwrite=True")
        return writer.store_new_run(
            dataset, claim, key, storage.id_array(ids), None, out, config, timings={}, t_start=t_start,
            transform_state={k: getattr(parent, k, None) for k in ("pca_mean", "pca_components", "umap_fit_ids", "umap_fit_coords")},
            inherited={"parents": parents, "parent_paths": {str(p): paths[p] for p in fits}, "stability": stability}, overwrite=True,
        )


#: the parent's config that a level keeps: how features are made and how clusters are fitted
_KEPT = (
    "method", "source", "embeddings_field", "model", "patches_field", "normalize", "reduction", "n_components",
    "input_dim", "dim", "num_representatives", "loss", "loss_param", "loss_param_rule",
    "umap_params", "umap_fit_size", "umap_random_state",
)


def _level_config(parent_key, parent_config, key, k, num_clustered):
    config = {n: getattr(parent_config, n, None) for n in _KEPT}
    method = get_method(parent_config.method)
    config.update({n: getattr(parent_config, n) for n in method.defaults if hasattr(parent_config, n)})
    config.update(
        k=k, k_requested=k, parent_run=parent_key, root_run=parent_config.root_run or parent_key,
        level=(parent_config.level or 1) + 1, num_samples=num_clustered, num_clustered=num_clustered,
        num_fit=num_clustered, **cr.default_fields(key), path_field=f"{key}_path",
    )
    return config


def subcluster(samples, run_key, cluster, k=None):
    """Sub-clusters ``cluster`` of run ``run_key`` into the level below (a
    run created on the first call): ``k`` sub-clusters, or the recommendation
    of :func:`clustering.choose_k` on its members when None. The run itself
    is unchanged; sub-clustering a cluster again replaces its sub-clusters.

    Returns:
        ``(level run key, the new sub-cluster ids)``
    """
    dataset = samples._root_dataset
    parent = writer.latest_results(dataset, run_key)
    cr.require_sample_run(parent.config, run_key, "subcluster")
    if cluster not in parent.cluster_ids():
        raise ValueError(f"Cluster {cluster!r} of run '{run_key}' does not exist; its clusters are {parent.cluster_ids()}")
    fit = _fit_children(dataset, parent, RunModel.of(parent), int(cluster), k)
    members, local, C, losses, scores = fit
    key = level_key(run_key, parent.config)
    if key not in dataset.list_runs():
        results = _store_level(dataset, run_key, parent, {int(cluster): fit}, overwrite=False)
        return key, results.cluster_ids()
    with writer.RunEdit(dataset, key, "subcluster") as edit:
        for old in [int(c) for c, p in edit.parents.items() if p == int(cluster)]:
            edit.retire(old)
        new = edit.new_clusters(C)
        for j, c in enumerate(new):
            edit.parents[str(c)] = int(cluster)
            if scores is not None and np.isfinite(scores[j]):
                edit.stability[str(c)] = float(scores[j])
        edit.parent_paths[str(int(cluster))] = _paths(dataset, parent)[int(cluster)]
        row = {i: n for n, i in enumerate(edit.ids)}
        inside = [row[i] for i in members if i in row]
        outside = [n for n, i in enumerate(members) if i not in row]
        known = np.array([row.get(i, -1) for i in members])
        edit.labels[known[known >= 0]] = np.asarray(new)[local[known >= 0]]
        edit.losses[known[known >= 0]] = losses[known >= 0]
        if outside:
            edit.append([members[n] for n in outside], np.asarray(new)[local[outside]], losses[outside])
        edit.touched.update(new)
        edit.save({"parent": int(cluster), "k": len(new)}, {"clusters": new, "members": len(inside) + len(outside)})
    return key, new


def cluster_tree(samples, run_key):
    """The tree below run ``run_key`` as nested nodes: ``{"run_key",
    "cluster", "path", "name", "size", "stability", "children"}``, top-down
    (``stability`` None where the run has no score for the cluster)."""
    dataset = samples._root_dataset

    def nodes(key, parent=None):
        results = writer.latest_results(dataset, key)
        names = results.names or {}
        stability = getattr(results, "stability", None) or {}
        paths = _paths(dataset, results)
        parents = {int(c): p for c, p in (getattr(results, "parents", None) or {}).items()}
        below = cr.child_runs(dataset, key)
        out = []
        for c in results.cluster_ids():
            if parent is not None and parents.get(c) != parent:
                continue
            node = {
                "run_key": key, "cluster": c, "path": paths.get(c), "name": names.get(str(c)),
                "size": int(results.cluster_sizes[c]),
                "stability": stability.get(str(c)), "children": [],
            }
            for child in below:
                node["children"] += nodes(child, c)
            out.append(node)
        return out

    return nodes(run_key)
