"""What the Clusters panel shows, computed without the App.

:func:`run_overview` reads a run's clusters from its fields in **one MongoDB
aggregation** (per cluster: size, mean loss to the center, name, the first
representatives; the contingency with a ground-truth field when one is given),
so opening a run of 100,000 samples loads a few hundred numbers and the
thumbnails it shows, never per-sample values. The fields are what the App's
grid shows, so a cluster's size here is the count of its view.

The other functions shape that data for the panel (ground-truth choices,
sorting, the 2-d map) or build the views it loads into the grid (a cell of the
comparison of two runs).
"""

from collections import OrderedDict

import numpy as np

import fiftyone.core.aggregations as foa

from ..engine import metrics as cm
from .. import plots
from . import records as cr
from . import writer
from .evaluation import VISUALIZATION_METHODS, _gt_path, gt_fields, media_url

DEFAULT_NUM_THUMBNAILS = 4
MAP_MAX_POINTS = 5000

# sort key -> (label, row key, largest first)
SORTS = {
    "cluster": ("Cluster id", "cluster", False),
    "size": ("Size (largest first)", "size", True),
    "compactness": ("Compactness (tightest first)", "compactness", False),
    "loosest": ("Compactness (loosest first)", "compactness", True),
    "stability": ("Stability (least stable first)", "stability", False),
}
#: clusters scoring below this stability are marked as doubtful (Hennig: below
#: 0.5 a cluster dissolves, 0.6-0.75 is a pattern, above 0.85 highly stable)
UNSTABLE_BELOW = 0.6


class _Pipeline(foa.Aggregation):
    """A raw MongoDB pipeline run through ``samples.aggregate()`` (after the
    collection's own stages); its one output document is the result."""

    def __init__(self, pipeline):
        super().__init__(None)
        self._pipeline = pipeline

    def _kwargs(self):
        return [["pipeline", self._pipeline]]

    def to_mongo(self, sample_collection, context=None):
        return list(self._pipeline)

    def parse_result(self, d):
        return d

    def default_result(self):
        return {}


def _db_paths(config):
    """Database paths of the run's fields; for a run on patches, also the list
    of labels to unwind (``ground_truth.detections``) and its labels' ids."""
    paths = {k: getattr(config, k, None) for k in cr.FIELD_KEYS}
    patches_field = config.patches_field
    if patches_field:
        labels = config.label_field.rpartition(".")[0]
        return paths, labels, f"{labels}._id"
    return paths, None, "_id"


def _facets(config, num_thumbnails, gt_path):
    paths, unwind, id_path = _db_paths(config)
    label, loss, rep, name, path = (paths[k] for k in ("label_field", "loss_field", "rep_field", "name_field", "path_field"))
    group = {
        "_id": f"${label}",
        "size": {"$sum": 1},
        "compactness": {"$avg": f"${loss}"},
        "loss_sum": {"$sum": f"${loss}"},
    }
    if name:
        group["name"] = {"$max": f"${name}"}
    if path:
        group["path"] = {"$max": f"${path}"}
    facets = {
        "clusters": [{"$group": group}],
        "representatives": [
            {"$match": {rep: {"$gte": 1, "$lte": int(num_thumbnails)}}},
            {"$project": {"_id": 0, "id": f"${id_path}", "filepath": 1, "cluster": f"${label}", "rank": f"${rep}"}},
        ],
    }
    if gt_path:
        facets["ground_truth"] = [
            {"$group": {"_id": {"cluster": f"${label}", "value": f"${gt_path}"}, "count": {"$sum": 1}}}
        ]
    stages = [{"$unwind": f"${unwind}"}] if unwind else []
    return stages + [{"$match": {label: {"$ne": None}}}, {"$facet": facets}]


def _float(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _evaluation(rows, gt_field):
    """NMI, ARI, accuracy, purity and per-cluster majority from the aggregated
    (cluster, class) counts, with :func:`clustering.evaluate_run`'s rules: noise
    and samples without ground truth are left out."""
    kept = [r for r in rows if r["_id"]["cluster"] >= 0 and r["_id"].get("value") not in (None, "")]
    counts = np.array([r["count"] for r in kept], dtype=np.int64)
    if not counts.sum():
        raise ValueError(f"No clustered sample has ground truth in '{gt_field}'")
    # the points themselves (one entry per sample, in groups), for the metrics
    y_pred = np.repeat([r["_id"]["cluster"] for r in kept], counts)
    y_true = np.repeat(np.array([r["_id"]["value"] for r in kept], dtype=object), counts)
    y_true = y_true.astype(type(kept[0]["_id"]["value"]))
    scores = cm.scores(y_true, y_pred)
    scores["per_cluster"] = {r["cluster"]: r for r in scores["per_cluster"]}
    return {"gt_field": gt_field, "num_evaluated": int(counts.sum()), **scores}


def run_overview(samples, run_key, gt_field=None, num_thumbnails=DEFAULT_NUM_THUMBNAILS):
    """A run's header and per-cluster rows, from its fields in one aggregation.

    Args:
        samples: the dataset, or a view of it (only its samples count); a
            run on patches is read on the whole dataset
        run_key: a clustering run
        gt_field: optional ground-truth field (``Classification`` or string /
            int): adds NMI, ARI, accuracy, purity and each cluster's majority
            class and purity (noise and samples without ground truth left out)
        num_thumbnails: representatives per cluster (rank 1..n) with media URLs

    Returns:
        a dict with ``run_key``, ``header`` (method, loss, loss parameter, k,
        clusters, samples clustered, noise, objective = sum of the losses),
        ``clusters`` (per cluster, by id: ``cluster``, ``name``, ``path`` (in
        a level of a cluster tree, e.g. ``"7/2"``; else None), ``stability``
        (its score, :mod:`clustering.engine.stability`; None when not scored), ``size``,
        ``compactness`` (mean loss to the center), ``thumbnails`` and, with
        ``gt_field``, ``majority_class`` and ``purity``), ``noise`` (HDBSCAN's
        -1: ``{"size": n}`` or None), ``evaluation`` (None without
        ``gt_field``) and ``problem`` (None, or a sentence: the run is being
        written, or its last write or its computation was interrupted;
        :func:`clustering.check_run` compares every value)
    """
    dataset = samples._root_dataset
    config = cr.get_clustering_run_config(dataset, run_key)
    gt_path = None
    if gt_field:
        cr.require_sample_run(config, run_key, "evaluation against ground truth")
        gt_path = _gt_path(dataset, gt_field)
    # a run on patches is read on its dataset's labels; one on images on ``samples``
    collection = dataset if config.patches_field else samples
    result = collection.aggregate(_Pipeline(_facets(config, num_thumbnails, gt_path)))
    groups = {int(g["_id"]): g for g in result.get("clusters", [])}

    thumbnails = {}
    for r in sorted(result.get("representatives", []), key=lambda r: (r["cluster"], r["rank"])):
        thumbnails.setdefault(int(r["cluster"]), []).append(
            {"id": str(r["id"]), "filepath": r["filepath"], "url": media_url(r["filepath"])}
        )
    evaluation = _evaluation(result["ground_truth"], gt_field) if gt_path else None

    stability = getattr(writer.latest_results(dataset, run_key), "stability", None) or {}
    clusters = []
    for c in sorted(c for c in groups if c >= 0):
        g = groups[c]
        row = {
            "cluster": c,
            "name": g.get("name"),
            "path": g.get("path"),
            "stability": stability.get(str(c)),
            "size": int(g["size"]),
            "compactness": _float(g["compactness"]),
            "thumbnails": thumbnails.get(c, []),
        }
        if evaluation:
            p = evaluation["per_cluster"].get(c)
            row["majority_class"] = p["majority_class"] if p else None
            row["purity"] = p["purity"] if p else None
        clusters.append(row)
    if evaluation:
        evaluation.pop("per_cluster")

    noise = groups.get(-1)
    header = {
        "method": config.method,
        "loss": config.loss,
        "loss_param": config.loss_param,
        "k": config.k,
        "num_clusters": len(clusters),
        "num_clustered": int(sum(g["size"] for g in groups.values())),
        "num_noise": int(noise["size"]) if noise else 0,
        "objective": _float(sum(g["loss_sum"] for g in groups.values())) if groups else None,
        "embeddings_field": config.embeddings_field,
        "patches_field": config.patches_field,
        "label_field": config.label_field,
        "parent_run": config.parent_run,
        "level": config.level,
        "stability": _weighted_stability(clusters),
    }
    return {
        "run_key": run_key,
        "header": header,
        "clusters": clusters,
        "noise": {"size": int(noise["size"])} if noise else None,
        "evaluation": evaluation,
        "problem": writer.pending_write(dataset, run_key) or _incomplete(run_key, config),
    }


def _weighted_stability(rows):
    """The size-weighted mean stability of the scored clusters (None if none)."""
    scored = [r for r in rows if r["stability"] is not None]
    total = sum(r["size"] for r in scored)
    return sum(r["stability"] * r["size"] for r in scored) / total if total else None


def _incomplete(run_key, config):
    if config.status != "completed":
        return f"Run '{run_key}' is incomplete: its computation was interrupted"
    return None


class OverviewCache:
    """Overviews of runs (:func:`run_overview`) kept while they hold: a
    cached overview is used again while the run's stored state (any write to
    the run, from any process, stores new results) and its dataset's number
    of samples are unchanged; its ``problem`` is read anew each time."""

    def __init__(self, size=8):
        self.size = size
        self._entries = OrderedDict()

    def get(self, samples, run_key, gt_field=None, num_thumbnails=DEFAULT_NUM_THUMBNAILS):
        dataset = samples._root_dataset
        doc = cr.run_document(dataset, run_key) or {}
        stamp = (doc.get("results"), doc.get("config"), dataset._sample_collection.estimated_document_count())
        key = (str(dataset._doc.id), run_key, gt_field, num_thumbnails)
        entry = self._entries.get(key)
        if entry is None or entry[0] != stamp:
            entry = (stamp, run_overview(dataset, run_key, gt_field=gt_field, num_thumbnails=num_thumbnails))
            self._entries[key] = entry
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        config = cr.get_clustering_run_config(dataset, run_key)
        return dict(entry[1], problem=writer.pending_write(dataset, run_key) or _incomplete(run_key, config))

    def clear(self):
        self._entries.clear()


def run_keys(samples):
    """This plugin's clustering runs on the dataset, oldest first."""
    dataset = samples._root_dataset
    return sorted(cr.list_clustering_runs(dataset), key=lambda k: dataset.get_run_info(k).timestamp)


def ground_truth_fields(samples):
    """The fields a run can be scored against (:func:`clustering.runs.evaluation.gt_fields`)
    but the clustering runs' own fields (compare runs with :func:`clustering.compare_runs`)."""
    dataset = samples._root_dataset
    own = {getattr(dataset.get_run_info(key).config, k, None) for key in run_keys(dataset) for k in cr.FIELD_KEYS}
    return [f for f in gt_fields(dataset) if f not in own]


def evaluated_field(samples, run_key):
    """The ground-truth field run ``run_key`` was last evaluated against
    (:func:`clustering.evaluate_run`), if it is still one of
    :func:`ground_truth_fields`; else None."""
    dataset = samples._root_dataset
    field = getattr(cr.get_clustering_run_config(dataset, run_key), "evaluated_gt_field", None)
    return field if field in ground_truth_fields(dataset) else None


def sort_clusters(clusters, sort="cluster"):
    """``clusters`` (rows of :func:`run_overview`) sorted by ``sort`` (a key of
    :data:`SORTS`); ties and missing values (last) by cluster id."""
    if sort not in SORTS:
        raise ValueError(f"Unknown sort '{sort}'; choose one of {list(SORTS)}")
    _, key, largest_first = SORTS[sort]
    present = [r for r in clusters if r.get(key) is not None]
    missing = [r for r in clusters if r.get(key) is None]
    sign = -1 if largest_first else 1
    present.sort(key=lambda r: (sign * r[key], r["cluster"]))
    return present + sorted(missing, key=lambda r: r["cluster"])


def pair_view(samples, run_key_a, cluster_a, run_key_b, cluster_b):
    """The samples in cluster ``cluster_a`` of run ``run_key_a`` and in
    ``cluster_b`` of run ``run_key_b`` (a cell of the comparison's contingency
    table), by loss to their center in run a."""
    from fiftyone import ViewField as F

    from .compute import load_run_view

    config_b = cr.get_clustering_run_config(samples._root_dataset, run_key_b)
    label_b = cr.view_path(config_b, "label_field")
    return load_run_view(samples, run_key_a, cluster=int(cluster_a)).match(F(label_b) == int(cluster_b))


def map_keys(samples, run_key):
    """Keys of the dataset's 2-d FiftyOne Brain visualizations, the run's own
    (``{run_key}_umap`` / ``_tsne`` / ``_pca``, as :func:`clustering.visualize_run`
    names them) first."""
    import fiftyone.brain as fob

    dataset = samples._root_dataset
    keys = dataset.list_brain_runs(type=fob.Visualization)
    keys = [k for k in keys if getattr(dataset.get_brain_info(k).config, "num_dims", 2) == 2]
    own = [f"{run_key}_{m}" for m in VISUALIZATION_METHODS if f"{run_key}_{m}" in keys]
    return own + [k for k in keys if k not in own]


def map_chart(samples, run_key, brain_key, max_points=MAP_MAX_POINTS, random_state=0):
    """A 2-d scatter of a brain visualization colored by the run's clusters
    (:func:`clustering.plots.scatter_figure`), at most ``max_points`` of its
    points (a random sample); each trace carries the points' sample ids, so a
    selection in the App gives the selected samples."""
    dataset = samples._root_dataset
    config = cr.get_clustering_run_config(dataset, run_key)
    cr.require_sample_run(config, run_key, "the map")
    results = dataset.load_brain_results(brain_key)
    points = np.asarray(results.current_points, dtype=float)
    ids = np.asarray(results.current_sample_ids)
    if len(points) > max_points:
        keep = np.sort(np.random.default_rng(random_state).choice(len(points), max_points, replace=False))
        points, ids = points[keep], ids[keep]
    found, labels = dataset.select(ids.tolist()).values(["id", config.label_field])
    label_of = dict(zip(found, labels))
    keep = np.array([label_of.get(i) is not None for i in ids], dtype=bool)
    labels = np.array([label_of[i] for i in ids[keep]], dtype=np.int64)
    figure = plots.scatter_figure(
        points[keep], labels, f"Map '{brain_key}' colored by run '{run_key}'", max_points=max_points, ids=ids[keep].tolist()
    )
    return figure, int(keep.sum())


def run_summary(samples, run_key, gt_field=None, num_thumbnails=3, silhouette=False, sample_size=None):
    """A compact report of a run (its samples in ``samples``), from its read
    model (:func:`run_overview`): config, per-cluster size / name / mean loss
    / representatives (ids, filepaths, App media URLs), and metrics
    (objective; silhouette when ``silhouette=True``; NMI / ARI / accuracy /
    purity when ``gt_field`` is given)."""
    from .evaluation import DEFAULT_SAMPLE_SIZE, silhouette_analysis

    overview = run_overview(samples, run_key, gt_field=gt_field, num_thumbnails=num_thumbnails)
    config = cr.get_clustering_run_config(samples, run_key)
    sil = None
    if silhouette:
        sil = silhouette_analysis(samples, run_key, sample_size=sample_size or DEFAULT_SAMPLE_SIZE)
        sil_by = {c["cluster"]: c["mean"] for c in sil["clusters"]}
    clusters = []
    for r in overview["clusters"]:
        row = {
            "cluster": r["cluster"], "name": r["name"], "size": r["size"], "mean_loss": r["compactness"],
            "representatives": r["thumbnails"],
        }
        if "purity" in r:
            row["majority_class"], row["purity"] = r["majority_class"], r["purity"]
        if sil is not None:
            row["silhouette"] = sil_by.get(r["cluster"])
        clusters.append(row)
    h = overview["header"]
    sizes = [r["size"] for r in clusters]
    metrics = {
        "objective": h["objective"],
        "num_clusters": h["num_clusters"],
        "num_clustered": h["num_clustered"],
        "num_noise": h["num_noise"],
        "largest_cluster": max(sizes, default=0),
        "smallest_cluster": min(sizes, default=0),
    }
    if sil is not None:
        metrics["silhouette"] = sil["silhouette"]
    ev = overview["evaluation"]
    if ev:
        metrics.update({k: ev[k] for k in ("gt_field", "num_evaluated", "nmi", "ari", "accuracy", "purity")})
    cfg = {
        k: getattr(config, k, None)
        for k in ("method", "k", "loss", "loss_param", "embeddings_field", "source", "normalize", "reduction", "n_components", "label_field", "loss_field", "rep_field")
    }
    return {
        "run_key": run_key,
        "config": {k: v for k, v in cfg.items() if v is not None},
        "metrics": metrics,
        "clusters": clusters,
        "galleries": (
            f"Operator 'load_run_view' (or clustering.load_run_view(dataset, '{run_key}', ...)) "
            "shows a cluster's images nearest its center first (cluster=c), every "
            "cluster's representatives (representatives=True) or the images farthest from "
            f"their center (outliers=N); sort any view by '{config.loss_field}' yourself, or "
            f"filter by '{config.label_field}' in the sidebar."
        ),
    }
