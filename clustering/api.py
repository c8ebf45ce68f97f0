"""FiftyOne-facing clustering API: compute a run, and manage runs.

``compute_clusters`` validates everything before writing anything, clusters in
memory, then writes only its own fields (by sample id on the root dataset, or by
label id on the patches' labels for a patches view) and
registers a FiftyOne custom run; if writing fails the run and its fields are
removed again.
"""

import time

import numpy as np

from . import features as cf
from . import runs as cr
from . import storage
from .methods import get_method
from .progress import progress_or_bar, scaled

DEFAULT_NUM_REPRESENTATIVES = 5


def _validate_key(samples, run_key, overwrite):
    if not isinstance(run_key, str) or not run_key.isidentifier():
        raise ValueError(
            f"Invalid run key {run_key!r}: use a Python identifier such as 'clusters_l2'"
        )
    if run_key in samples._root_dataset.list_runs():
        if not overwrite:
            raise ValueError(
                f"A run with key '{run_key}' already exists; pass overwrite=True "
                "or choose another key"
            )
        cr.get_clustering_run_config(samples._root_dataset, run_key)


def patches_field_of(samples):
    """The label field whose patches ``samples`` holds (its labels are clustered),
    or None for a collection of images."""
    if not getattr(samples, "_is_patches", False):
        return None
    field = getattr(samples, "patches_field", None)
    if field is None:
        raise ValueError(
            "Evaluation patches views cannot be clustered; use to_patches(<label field>)"
        )
    return field


def _resolve_fields(samples, run_key, overwrite, **names):
    fields = cr.default_fields(run_key)
    fields.update({k: v for k, v in names.items() if v})
    dataset = samples._root_dataset
    owned = set()
    if overwrite and run_key in dataset.list_runs():
        owned = set(get_clustering_config_fields(dataset, run_key).values())
    values = list(fields.values())
    if len(set(values)) != len(values):
        raise ValueError(f"Output field names must differ; got {fields}")
    for key, name in fields.items():
        if not name.isidentifier():
            raise ValueError(f"Invalid {key} {name!r}: use a Python identifier")
    patches_field = patches_field_of(samples)
    fields = {k: cr.output_path(dataset, patches_field, v) for k, v in fields.items()}
    for key, name in fields.items():
        if dataset.has_field(name) and name not in owned:
            raise ValueError(
                f"Field '{name}' already exists and does not belong to run "
                f"'{run_key}'; choose another {key} or delete that field"
            )
    return fields


def _check_k(method, k, n):
    if not method.needs_k:
        return None
    if k is None or isinstance(k, bool) or int(k) != k:
        raise ValueError(f"Method '{method.name}' needs an integer k (number of clusters)")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if n is not None and k > n:
        raise ValueError(f"k={k} is larger than the {n} samples with embeddings")
    return k


def _load_features(samples, embeddings, model, progress):
    """Returns (sample ids, X, ids without embeddings, source description)."""
    if embeddings is not None and not isinstance(embeddings, str):
        X = np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings)
        if X.ndim != 2:
            raise ValueError(f"An embeddings array must be 2-D (n, d); got shape {X.shape}")
        ids = samples.values("id")
        if len(X) != len(ids):
            raise ValueError(
                f"The embeddings array has {len(X)} rows but the collection has {len(ids)} samples"
            )
        return ids, cf.as_matrix(list(X), "the embeddings array"), [], {"source": "array"}

    if embeddings is None and model is None:
        raise ValueError("Provide embeddings (a vector field name or an array) or a model")

    if model is not None:
        from .embeddings import default_embeddings_field, ensure_embeddings

        embeddings = embeddings or default_embeddings_field(model)
        patches_field = patches_field_of(samples)
        if patches_field:  # embed the crops of exactly these patches, on their labels
            name = embeddings.rpartition(".")[2]
            labels = samples._root_dataset.select_labels(ids=samples.values("id"), fields=patches_field)
            ensure_embeddings(labels, name, model, progress=progress, patches_field=patches_field)
            embeddings = f"{patches_field}.{name}"
            samples = _regenerated(samples)
        else:
            ensure_embeddings(samples, embeddings, model, progress=progress)
    ids, X, missing = storage.read_embeddings(samples, embeddings)
    return ids, X, missing, {"source": "model" if model else "field", "embeddings_field": embeddings, "model": model}


def _representative_ranks(labels, losses, n):
    """rank 1..n of the n smallest-loss members of each cluster (0 = unranked),
    and {cluster: member indices best first}."""
    ranks = np.zeros(len(labels), dtype=np.int64)
    reps = {}
    for c in np.unique(labels):
        if c < 0:
            continue
        members = np.flatnonzero(labels == c)
        best = members[np.argsort(losses[members], kind="stable")[:n]]
        ranks[best] = np.arange(1, len(best) + 1)
        reps[int(c)] = best
    return ranks, reps


def compute_clusters(
    samples,
    run_key,
    embeddings=None,
    model=None,
    method="generalized_kmeans",
    k=None,
    loss=None,
    loss_param=None,
    normalize=False,
    reduction="none",
    n_components=None,
    num_representatives=DEFAULT_NUM_REPRESENTATIVES,
    label_field=None,
    loss_field=None,
    rep_field=None,
    overwrite=False,
    progress=None,
    **method_params,
):
    """Clusters ``samples`` and stores the result as run ``run_key``.

    Args:
        samples: a FiftyOne dataset or view
        run_key: the run key (a Python identifier)
        embeddings: a vector field name, or an (n, d) array aligned with ``samples``
        model: an embeddings model (see :func:`clustering.available_models`) used
            to compute ``embeddings`` for samples that lack them
        method: one of :func:`clustering.available_methods`
        k: number of clusters (all methods but ``hdbscan``)
        loss, loss_param: the generalized k-means loss and its delta / sigma /
            epsilon (None = data-driven default)
        normalize: L2-normalize embeddings first
        reduction, n_components: ``"none"``, ``"pca"`` or ``"umap"`` before clustering
        num_representatives: how many samples per cluster get a representative rank
        label_field, loss_field, rep_field: output fields (default ``{run_key}_cluster``,
            ``{run_key}_loss``, ``{run_key}_rep``); on a patches view
            (``dataset.to_patches(field)``) they are attributes of the labels
            (``field.detections.{run_key}_cluster``)
        overwrite: replace an existing run with this key
        progress: None or True (a progress bar), False (silent), or a callable
            ``progress(fraction, message)``
        **method_params: the method's own parameters (``n_init``, ``max_iter``,
            ``tol``, ``device``, ``random_state``, ``min_cluster_size``, ...)

    Returns:
        a :class:`clustering.runs.ClusteringResults`
    """
    t_start = time.perf_counter()
    method_obj = get_method(method)
    params = dict(method_params)
    if loss is not None:
        params["loss"] = loss
    if loss_param is not None:
        params["loss_param"] = loss_param
    params = method_obj.resolve_params({k_: v for k_, v in params.items() if v is not None})
    _validate_key(samples, run_key, overwrite)
    fields = _resolve_fields(samples, run_key, overwrite, label_field=label_field, loss_field=loss_field, rep_field=rep_field)
    _check_k(method_obj, k, len(samples))
    if int(num_representatives) < 1:
        raise ValueError("num_representatives must be >= 1")

    with progress_or_bar(progress, f"Clustering '{run_key}'") as report:
        has_model = model is not None
        ids, X, missing, source = _load_features(
            samples, embeddings, model, scaled(report, 0.0, 0.5) if has_model else None
        )
        k = _check_k(method_obj, k, len(ids))
        t_features = time.perf_counter()
        transform = cf.FeatureTransform(normalize, reduction, n_components, random_state=params.get("random_state"))
        X = transform.fit_transform(X)
        feature_info = transform.info_
        start = 0.5 if has_model else 0.05
        out = method_obj.fit(X, k, params, progress=scaled(report, start, 0.95))
        t_cluster = time.perf_counter()
        report(0.95, "saving")
        results = _save_run(
            samples, run_key, ids, out, fields, overwrite, int(num_representatives),
            config=dict(
                method=method,
                k=k,
                patches_field=patches_field_of(samples),
                **out.params,
                **source,
                **feature_info,
                num_samples=len(samples),
                num_clustered=len(ids),
                num_missing_embeddings=len(missing),
                num_representatives=int(num_representatives),
                **fields,
            ),
            timings={"features_s": t_features - t_start, "cluster_s": t_cluster - t_features},
            transform_state=transform.state(),
        )
        report(1.0, "done")
    return results


def _save_run(samples, run_key, ids, out, fields, overwrite, num_reps, config, timings, transform_state):
    import fiftyone as fo

    dataset = samples._root_dataset
    t0 = time.perf_counter()
    labels = np.asarray(out.labels, dtype=np.int64)
    losses = np.asarray(out.sample_losses, dtype=np.float64)
    ranks, reps = _representative_ranks(labels, np.nan_to_num(losses, nan=np.inf), num_reps)

    if overwrite and run_key in dataset.list_runs():
        dataset.delete_run(run_key)  # also deletes its fields

    # registered first with status "writing" so that a run killed while writing
    # its fields is visible as incomplete and can be deleted with its fields
    run_config = cr.ClusteringRunConfig(status="writing", **config)
    samples.register_run(run_key, run_config, overwrite=overwrite)
    try:
        dataset.add_sample_field(fields["label_field"], fo.IntField)
        dataset.add_sample_field(fields["loss_field"], fo.FloatField)
        dataset.add_sample_field(fields["rep_field"], fo.IntField)

        storage.write_fields(
            dataset,
            {
                fields["label_field"]: dict(zip(ids, labels.tolist())),
                fields["loss_field"]: {i: float(v) for i, v in zip(ids, losses) if np.isfinite(v)},
                fields["rep_field"]: {ids[i]: int(ranks[i]) for i in np.flatnonzero(ranks)},
            },
            patches_field=run_config.patches_field,
        )
        k_total = int(labels.max()) + 1 if (labels >= 0).any() else 0
        timings = dict(timings, write_s=time.perf_counter() - t0)
        timings["total_s"] = sum(timings.values())
        results = cr.ClusteringResults(
            samples,
            run_config,
            run_key,
            sample_ids=list(ids),
            labels=labels,
            sample_losses=losses,
            centers=np.asarray(out.centers, dtype=np.float32),
            cluster_sizes=np.bincount(labels[labels >= 0], minlength=k_total),
            objective=float(out.objective),
            objective_history=np.asarray(out.objective_history, dtype=np.float64),
            n_iter=out.n_iter,
            representatives={str(c): [ids[i] for i in idx] for c, idx in reps.items()},
            timings=timings,
            names={},
            **transform_state,
        )
        samples.save_run_results(run_key, results)
        run_config.status = "completed"
        dataset.update_run_config(run_key, run_config)
    except BaseException:
        dataset.delete_run(run_key)
        raise
    return results


def load_clustering_results(samples, run_key):
    """The :class:`clustering.runs.ClusteringResults` of run ``run_key``."""
    cr.get_clustering_run_config(samples, run_key)
    results = samples.load_run_results(run_key)
    if not isinstance(results, cr.ClusteringResults):  # stored by an older class
        results = cr.ClusteringResults._from_dict(
            {k: v for k, v in vars(results).items() if not k.startswith("_")},
            results.samples,
            results.config,
            run_key,
        )
    return results


def get_run_info(samples, run_key):
    """Config, timestamp and result summary of a clustering run, as a dict."""
    cr.get_clustering_run_config(samples, run_key)
    info = samples.get_run_info(run_key)
    config = info.config.serialize()
    config.pop("cls", None)
    complete = config.get("status") == "completed"
    results = load_clustering_results(samples, run_key) if complete else None
    return {
        "run_key": run_key,
        "status": "completed" if complete else "incomplete (interrupted while writing; delete it)",
        "timestamp": str(info.timestamp),
        "version": info.version,
        "config": config,
        "summary": results.summary() if results else None,
        "timings": results.timings if results else None,
    }


def _regenerated(view):
    """``view`` rebuilt from its stages without their cached state. A patches view
    otherwise keeps the patches generated before label fields were written to its
    dataset (and regenerating them in place would break other live views)."""
    import fiftyone.core.view as fov

    if not getattr(view, "_is_patches", False):
        return view
    stages = view._serialize()
    for stage in stages:
        stage["kwargs"] = [kv for kv in stage["kwargs"] if not kv[0].startswith("_")]
    return fov.DatasetView._build(view._root_dataset, stages)


def load_run_view(samples, run_key, cluster=None, representatives=False, outliers=None):
    """A view of a run's samples (of its patches, for a run on a patches view).

    Args:
        cluster: only this cluster, sorted by loss to its center (best first)
        representatives: only ranked representatives, by cluster then rank
        outliers: the ``outliers`` members with the largest loss (of ``cluster``
            if given), worst first
    """
    from fiftyone import ViewField as F

    config = cr.get_clustering_run_config(samples, run_key)
    label, loss, rep = (cr.view_path(config, k) for k in ("label_field", "loss_field", "rep_field"))
    view = _regenerated(samples._root_dataset.load_run_view(run_key)).exists(label)
    if cluster is not None:
        view = view.match(F(label) == int(cluster))
    if representatives:
        return view.exists(rep).sort_by([(label, 1), (rep, 1)])
    if outliers:
        return view.exists(loss).sort_by(loss, reverse=True).limit(int(outliers))
    if cluster is not None:
        return view.sort_by(loss)
    return view.sort_by([(label, 1), (loss, 1)])


def rename_run(samples, run_key, new_run_key):
    """Renames a run and the fields named after it (``{run_key}_*``)."""
    dataset = samples._root_dataset
    config = cr.get_clustering_run_config(dataset, run_key)
    if not isinstance(new_run_key, str) or not new_run_key.isidentifier():
        raise ValueError(f"Invalid new run key {new_run_key!r}: use a Python identifier")
    if new_run_key in dataset.list_runs():
        raise ValueError(f"A run with key '{new_run_key}' already exists")
    for k in cr.FIELD_KEYS:
        name = getattr(config, k, None)
        target = name and cr.renamed_path(name, run_key, new_run_key)
        if target:
            if dataset.has_field(target):
                raise ValueError(f"Cannot rename: field '{target}' already exists")
    dataset.rename_run(run_key, new_run_key)
    return get_clustering_config_fields(dataset, new_run_key)


def get_clustering_config_fields(samples, run_key):
    config = cr.get_clustering_run_config(samples, run_key)
    return {k: getattr(config, k) for k in cr.FIELD_KEYS if getattr(config, k, None)}


def delete_run(samples, run_key):
    """Deletes a run, its results and its fields."""
    dataset = samples._root_dataset
    fields = get_clustering_config_fields(dataset, run_key)
    dataset.delete_run(run_key)
    return fields
