"""FiftyOne-facing clustering API: compute a run, and manage runs.

``compute_clusters`` validates everything before writing anything, clusters in
memory, then writes only its own fields (by sample id on the root dataset, or by
label id on the patches' labels for a patches view) and
registers a FiftyOne custom run; if writing fails the run and its fields are
removed again.
"""

import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..features import transform as cf
from .. import resources
from . import records as cr
from . import storage
from . import identity
from . import writer
from ..engine.methods import get_method
from .model import RunModel
from ..progress import progress_or_bar, scaled

DEFAULT_NUM_REPRESENTATIVES = 5


def _check_run_key(run_key):
    if not isinstance(run_key, str) or not run_key.isidentifier():
        raise ValueError(
            f"Invalid run key {run_key!r}: use a Python identifier such as 'clusters_l2'"
        )


def _validate_key(samples, run_key, overwrite):
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


class _ArraySource:
    """An ``(n, d)`` embeddings array aligned with ``samples``, read like a
    field (:class:`clustering.runs.storage.VectorReader`). Its rows are the caller's:
    they are never modified in place."""

    in_place = False
    description = "the embeddings array"

    def __init__(self, samples, X):
        X = np.asarray(X.detach().cpu() if hasattr(X, "detach") else X)
        if X.ndim != 2:
            raise ValueError(f"An embeddings array must be 2-D (n, d); got shape {X.shape}")
        self.ids, self.sample_ids = storage.read_ids(samples)
        if len(X) != len(self.ids):
            raise ValueError(
                f"The embeddings array has {len(X)} rows but the collection has {len(self.ids)} samples"
            )
        self.X = cf.as_matrix(X, "the embeddings array")
        self.count, self.dim = self.X.shape

    def _rows(self, index):
        sample_ids = self.sample_ids[index] if self.sample_ids is not None else None
        return storage.Vectors(self.ids[index], self.X[index], np.empty((0, 12), np.uint8), sample_ids)

    def read(self, positions=None, progress=None):
        return self._rows(slice(None) if positions is None else positions)

    def chunks(self, chunk_rows, progress=None):
        for s in range(0, self.count, chunk_rows):
            yield self._rows(slice(s, s + chunk_rows))


def _features_source(samples, embeddings, model, progress):
    """Where the features come from, and its description for the run config:
    an :class:`_ArraySource` or a :class:`clustering.runs.storage.VectorReader` of
    the embeddings field (computed first with ``model`` for the samples that
    lack it)."""
    if embeddings is not None and not isinstance(embeddings, str):
        return _ArraySource(samples, embeddings), {"source": "array"}
    if embeddings is None and model is None:
        raise ValueError("Provide embeddings (a vector field name or an array) or a model")

    if model is not None:
        from ..features.embeddings import ensure_embeddings
        from ..features.models import default_embeddings_field

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
    description = {"source": "model" if model else "field", "embeddings_field": embeddings, "model": model}
    return storage.VectorReader(samples, embeddings), description


def read_features(samples, embeddings, progress=None):
    """``(vectors, description)``: the :class:`clustering.runs.storage.Vectors` of
    every row of ``embeddings`` (a field of ``samples`` or an array aligned
    with them) and the source's description for a run config."""
    source, description = _features_source(samples, embeddings, None, None)
    return source.read(progress=progress), description


#: bytes of memory a full fit needs per feature value (the float32 matrix and
#: the engine's temporaries) and per sample (ids, labels, losses, ...)
_FIT_BYTES_PER_VALUE, _FIT_BYTES_PER_SAMPLE = 6, 96
#: share of the available memory a fit may plan to use
_MEMORY_SHARE = 0.6
#: an automatic fit sample has at least this many rows per cluster
_MIN_ROWS_PER_CLUSTER = 50
#: bytes of features per chunk of the streamed assignment (at most a tenth of
#: the available memory)
_CHUNK_BYTES = 64 << 20


def _check_fit_sample_size(method, fit_sample_size):
    """The requested sample size (None for ``"auto"``), checked."""
    if fit_sample_size in (None, "auto"):
        return None
    if isinstance(fit_sample_size, bool) or not isinstance(fit_sample_size, (int, np.integer)) or fit_sample_size < 1:
        raise ValueError(f"fit_sample_size must be 'auto' or an integer >= 1; got {fit_sample_size!r}")
    if not method.can_assign:
        raise ValueError(
            f"Method '{method.name}' cannot assign samples outside its fit, so it cannot fit on a "
            "sample (fit_sample_size); use generalized_kmeans, kmeans or minibatch_kmeans"
        )
    return int(fit_sample_size)


def _plan_fit(method, count, dim, k, fit_sample_size, available):
    """``(num_fit, streamed)``: fit on all ``count`` rows, or on a uniform
    sample of ``num_fit`` rows then assign every row in streamed chunks.
    ``"auto"`` fits on as many rows as ``available`` bytes hold (None: all)."""
    num_fit = _check_fit_sample_size(method, fit_sample_size)
    if num_fit is None and method.can_assign and available is not None:
        fits = int(_MEMORY_SHARE * available // (dim * _FIT_BYTES_PER_VALUE + _FIT_BYTES_PER_SAMPLE))
        num_fit = max(fits, _MIN_ROWS_PER_CLUSTER * (k or 1))
    if num_fit is None or num_fit >= count:
        return count, False
    return num_fit, True


def _chunk_rows(dim):
    """Rows per chunk of the streamed assignment."""
    budget = _CHUNK_BYTES
    available = resources.available_memory()
    if available is not None:
        budget = min(budget, available // 10)
    return max(256, budget // (4 * dim))


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
    reduction="auto",
    n_components=None,
    umap_fit_size=cf.UMAP_FIT_SIZE,
    num_representatives=DEFAULT_NUM_REPRESENTATIVES,
    label_field=None,
    loss_field=None,
    rep_field=None,
    fit_sample_size="auto",
    overwrite=False,
    keep_identity=True,
    levels=None,
    stability="auto",
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
        reduction, n_components: ``"auto"`` (UMAP to 5 dimensions, cosine
            metric, fitted on at most 20,000 samples, from 50 samples on; the
            default, from the photo benchmark), ``"umap"``, ``"pca"`` or
            ``"none"`` before clustering
        umap_fit_size: the samples a UMAP is fitted on (a uniform sample when
            there are more; the others are mapped by its ``transform``)
        num_representatives: how many samples per cluster get a representative rank
        label_field, loss_field, rep_field: output fields (default ``{run_key}_cluster``,
            ``{run_key}_loss``, ``{run_key}_rep``); on a patches view
            (``dataset.to_patches(field)``) they are attributes of the labels
            (``field.detections.{run_key}_cluster``)
        fit_sample_size: ``"auto"`` (fit on every sample when the features fit
            in the available memory, else on the largest sample that does), or
            a number of samples: fit on a uniform random sample of that many
            (normalization and reduction too), then assign every sample, a chunk
            at a time, to the center of smallest loss (``generalized_kmeans``,
            ``kmeans``, ``minibatch_kmeans``)
        overwrite: replace an existing run with this key
        keep_identity: when replacing a run, match the new clusters to its
            clusters by their members (:mod:`clustering.runs.identity`): a matched
            cluster keeps its id, name and description and the run keeps its
            ``edits``, with a ``recompute`` record listing the matched, new
            and vanished clusters; False starts from nothing
        stability: a trust score per cluster (:mod:`clustering.engine.stability`:
            its Jaccard similarity to its best match across refits on random
            subsamples of at most 10,000 samples, 20 refits of up to 3
            restarts), stored in ``results.stability`` with the run's
            size-weighted mean in ``results.stability_score``; ``"auto"``:
            for the nearest-center methods (generalized k-means, k-means,
            mini-batch k-means), where it costs at most about the fit
        levels: a cluster tree in one call (:mod:`clustering.runs.tree`): the
            number of clusters at each level, top-down (``[10, 4]``: 10
            clusters, each split into 4 sub-clusters, stored as run
            ``<run_key>_l2``), with ``"auto"`` for a level whose clusters each
            get the k that :func:`clustering.choose_k` recommends for them;
            ``levels="auto"`` is ``[k, "auto"]``. ``k`` is the top level's
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
    _check_run_key(run_key)
    k, below = _check_levels(method_obj, k, levels, samples)
    if stability not in ("auto", True, False):
        raise ValueError(f"stability must be 'auto', True or False; got {stability!r}")
    scored = method_obj.can_assign and method_obj.needs_k if stability == "auto" else stability
    _check_k(method_obj, k, len(samples))
    if int(num_representatives) < 1:
        raise ValueError("num_representatives must be >= 1")
    transform = cf.FeatureTransform(
        normalize, reduction, n_components, random_state=params.get("random_state"), umap_fit_size=umap_fit_size
    )
    requested_fit = _check_fit_sample_size(method_obj, fit_sample_size) or "auto"

    with writer.claimed(samples, run_key, "compute_clusters", allow_interrupted=overwrite) as claim, \
            progress_or_bar(progress, f"Clustering '{run_key}'") as whole:
        report = scaled(whole, 0.0, 0.6) if below else whole
        _validate_key(samples, run_key, overwrite)
        fields = _resolve_fields(
            samples, run_key, overwrite, label_field=label_field, loss_field=loss_field, rep_field=rep_field
        )
        timings = {}
        stages = scaled(report, 0.5, 1.0) if model is not None else report
        t0 = time.perf_counter()
        source, description = _features_source(
            samples, embeddings, model, scaled(report, 0.0, 0.5) if model is not None else None
        )
        if model is not None:
            timings["embed_s"] = time.perf_counter() - t0
        # an array is in memory already: "auto" fits on all of it
        available = None if isinstance(source, _ArraySource) else resources.available_memory()
        num_fit, streamed = _plan_fit(method_obj, source.count, source.dim, k, fit_sample_size, available)
        fit = (_fit_sample_and_assign, num_fit) if streamed else (_fit_all,)
        done = fit[0](source, *fit[1:], method_obj, k, params, transform, stages, timings, scored)
        plan = {"fit_sample_size": requested_fit, "num_fit": done.num_fit, "streamed": streamed}
        if streamed:
            plan["fit_objective"] = done.fit_objective
        out = done.out
        tree_features = (done.ids, done.features) if below and done.features is not None else None
        done.features = None
        formed = _formed_clusters(run_key, out.labels, done.k)
        scores = {} if done.stability is None else {
            c: float(s) for c, s in enumerate(done.stability.scores) if np.isfinite(s)
        }
        inherited = _inherit_identity(samples, run_key, done.ids, out) if overwrite and keep_identity else None
        if inherited is not None:  # the scores follow their clusters' ids
            scores = {inherited["ids_of"][c]: s for c, s in scores.items()}
        inherited = dict(inherited or {}, stability={str(c): s for c, s in scores.items()})
        results = writer.store_new_run(
            samples, claim, run_key, done.ids, done.sample_ids, out, overwrite=overwrite,
            config=dict(
                method=method,
                k=formed,
                k_requested=done.k,
                patches_field=patches_field_of(samples),
                **out.params,
                **description,
                **transform.info_,
                **plan,
                num_samples=int(source.count),
                num_clustered=len(done.ids),
                num_missing_embeddings=len(done.missing_ids),
                num_representatives=int(num_representatives),
                **fields,
            ),
            timings=timings,
            t_start=t_start,
            transform_state=dict(transform.state(), umap_fit_ids=done.umap_fit_ids),
            inherited=inherited,
            progress=scaled(stages, 0.75, 0.975),
        )
        report(1.0, "done")
        if below:
            from .tree import compute_levels

            compute_levels(samples, run_key, below, progress=scaled(whole, 0.6, 1.0), features=tree_features)
            whole(1.0, "done")
    return results


def _check_levels(method, k, levels, samples):
    """``(k, the levels below the top)`` of a call with ``levels``."""
    if levels is None:
        return k, []
    if levels == "auto":
        levels = [k, "auto"]
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__") or len(list(levels)) < 2:
        raise ValueError(f"levels must be 'auto' or a list of two or more numbers of clusters, top-down; got {levels!r}")
    levels = list(levels)
    if not method.needs_k or not method.can_assign:
        raise ValueError(f"Cluster trees need a nearest-center method with k; '{method.name}' is not one")
    if patches_field_of(samples):
        raise ValueError("Cluster trees support runs on images only")
    if k is not None and k != levels[0]:
        raise ValueError(f"k={k} and levels={levels} disagree on the top level; give one of them")
    for level in levels[1:]:
        if level != "auto" and (isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 2):
            raise ValueError(f"Each level below the top needs an integer k >= 2 or 'auto'; got {level!r}")
    return levels[0], [None if level == "auto" else int(level) for level in levels[1:]]


def _inherit_identity(samples, run_key, ids, out):
    """Matches the new fit's clusters to those of the run it replaces
    (:func:`clustering.runs.identity.carry_over`) and gives them their ids (in
    place in ``out``); returns what the new results inherit, or None when
    there is no completed run to replace."""
    dataset = samples._root_dataset
    if run_key not in dataset.list_runs() or cr.get_clustering_run_config(dataset, run_key).status != "completed":
        return None
    old = writer.latest_results(dataset, run_key, reuse=False)
    ids_of, carried = identity.carry_over(old, storage.id_strings(ids), out.labels)
    carried["ids_of"] = ids_of
    lookup = np.full(len(out.centers) + 1, -1, dtype=np.int64)  # the last entry maps noise (-1)
    for new, old_id in ids_of.items():
        lookup[new] = old_id
    out.labels = lookup[np.asarray(out.labels)]
    centers = np.full((max(ids_of.values(), default=-1) + 1, out.centers.shape[1]), np.nan, dtype=np.float32)
    for new, old_id in ids_of.items():
        centers[old_id] = out.centers[new]
    out.centers = centers
    return carried


def _formed_clusters(run_key, labels, k):
    """The number of non-empty clusters (None without k), with a warning
    when it is smaller than ``k`` (fewer distinct feature vectors than k)."""
    if k is None:
        return None
    labels = np.asarray(labels)
    formed = len(np.unique(labels[labels >= 0]))
    if formed < k:
        warnings.warn(
            f"Run '{run_key}': only {formed} of the k={k} clusters could be formed (the features "
            f"have fewer distinct vectors than k); the run records k={formed}, k_requested={k}",
            stacklevel=3,
        )
    return formed


@dataclass
class _Clustered:
    """What a fit gives the run's writer: the clustered rows' ids (and their
    samples' ids, for patches), the ids without embeddings, the method's
    output over every clustered row, k, the rows and objective of the fit, and
    the ids of the rows a UMAP was fitted on; the fitted features, when every
    row was fitted (a tree's levels below start from them)."""

    ids: np.ndarray
    sample_ids: np.ndarray
    missing_ids: np.ndarray
    out: object
    k: int
    num_fit: int
    fit_objective: float
    umap_fit_ids: list = None
    stability: object = None  # a clustering.engine.stability.ClusterStability of the fit's labels
    features: np.ndarray = None


def _fit_all(source, method, k, params, transform, progress, timings, scored):
    """Reads every row and fits on all of them (and scores each cluster's
    stability when ``scored``)."""
    t0 = time.perf_counter()
    vectors = source.read(progress=scaled(progress, 0.0, 0.15))
    timings["read_s"] = time.perf_counter() - t0
    k = _check_k(method, k, len(vectors.ids))
    cf.check_magnitude(vectors.X, source.description)
    t0 = time.perf_counter()
    X = transform.fit_transform(vectors.X, copy=not source.in_place)
    vectors.X = None  # X may be a transformed copy: let the original go
    timings["reduce_s"] = time.perf_counter() - t0
    out = method.fit(X, k, params, progress=scaled(progress, 0.15, 0.6))
    timings["cluster_s"] = time.perf_counter() - t0
    stability = _stability(method, k, out, X, params, scaled(progress, 0.6, 0.75), timings) if scored else None
    return _Clustered(
        vectors.ids, vectors.sample_ids, vectors.missing_ids, out, k, len(X), out.objective,
        _fit_ids(vectors.ids, transform), stability, X,
    )


def _stability(method, k, out, X, params, progress, timings):
    """Each cluster's stability (:func:`clustering.engine.stability.method_stability`)."""
    from ..engine.stability import method_stability

    t0 = time.perf_counter()
    result = method_stability(method, X, out.labels, k, params, out.params, progress=progress)
    timings["stability_s"] = time.perf_counter() - t0
    return result


def _fit_sample_and_assign(source, num_fit, method, k, params, transform, progress, timings, scored):
    """Fits on ``num_fit`` uniformly drawn rows, then assigns every row a chunk
    at a time (memory: the sample and one chunk, whatever the number of rows)."""
    rng = np.random.default_rng(params.get("random_state"))
    positions = np.sort(rng.choice(source.count, size=num_fit, replace=False))
    t0 = time.perf_counter()
    sample = source.read(positions, progress=scaled(progress, 0.0, 0.1))
    timings["read_s"] = time.perf_counter() - t0
    k = _check_k(method, k, len(sample.ids))
    cf.check_magnitude(sample.X, source.description)
    t0 = time.perf_counter()
    X = transform.fit_transform(sample.X, copy=not source.in_place)
    timings["reduce_s"] = time.perf_counter() - t0
    umap_fit_ids = _fit_ids(sample.ids, transform)
    del sample
    out = method.fit(X, k, params, progress=scaled(progress, 0.1, 0.4))
    stability = _stability(method, k, out, X, params, scaled(progress, 0.4, 0.45), timings) if scored else None
    fitted = len(X)
    del X
    model = RunModel.fitted(out, transform)
    timings["cluster_s"] = time.perf_counter() - t0

    parts = {"ids": [], "sample_ids": [], "missing": [], "labels": [], "losses": []}
    assigned, done = scaled(progress, 0.45, 0.75), 0
    t_read = time.perf_counter()
    for chunk in source.chunks(_chunk_rows(source.dim)):
        t0 = time.perf_counter()
        timings["read_s"] += t0 - t_read
        if len(chunk.ids):
            cf.check_magnitude(chunk.X, source.description)
            labels, losses = model.assign(transform.transform(chunk.X, copy=not source.in_place))
            parts["labels"].append(labels)
            parts["losses"].append(losses)
        parts["ids"].append(chunk.ids)
        parts["missing"].append(chunk.missing_ids)
        if chunk.sample_ids is not None:
            parts["sample_ids"].append(chunk.sample_ids)
        done += len(chunk.ids) + len(chunk.missing_ids)
        if assigned is not None:
            assigned(done / source.count, f"assigning {done}/{source.count}")
        t_read = time.perf_counter()
        timings["cluster_s"] += t_read - t0
    fit_objective = out.objective
    out.labels = np.concatenate(parts["labels"])
    out.sample_losses = np.concatenate(parts["losses"])
    out.objective = float(np.nansum(out.sample_losses, dtype=np.float64))
    sample_ids = np.concatenate(parts["sample_ids"]) if parts["sample_ids"] else None
    return _Clustered(
        np.concatenate(parts["ids"]), sample_ids, np.concatenate(parts["missing"]), out, k, fitted, fit_objective,
        umap_fit_ids, stability,
    )


def _fit_ids(ids, transform):
    """The ids of the rows a UMAP was fitted on (None without a UMAP)."""
    rows = transform.umap_fit_rows_
    return None if rows is None else storage.id_strings(np.asarray(ids)[rows])


def load_clustering_results(samples, run_key):
    """The :class:`clustering.runs.ClusteringResults` of run ``run_key`` as
    stored now (another process's changes included)."""
    return writer.latest_results(samples, run_key)


def get_run_info(samples, run_key):
    """Config, timestamp and result summary of a clustering run, as a dict."""
    cr.get_clustering_run_config(samples, run_key)
    info = samples.get_run_info(run_key)
    config = info.config.serialize()
    config.pop("cls", None)
    complete = config.get("status") == "completed"
    results = load_clustering_results(samples, run_key) if complete else None
    pending = writer.pending_write(samples, run_key)
    if pending:
        status = pending
    elif complete:
        status = "completed"
    else:
        status = (
            "incomplete (its computation was interrupted): repair it with "
            f"clustering.check_run(dataset, '{run_key}', repair=True) or delete it"
        )
    return {
        "run_key": run_key,
        "status": status,
        "timestamp": str(info.timestamp),
        "version": info.version,
        "config": config,
        "summary": _summary(samples, run_key) if results else None,
        "timings": results.timings if results else None,
    }


def _summary(samples, run_key):
    """Clusters (size, name, representative), objective and counts of a run,
    from its read model (:func:`clustering.runs.browse.run_overview`)."""
    from .browse import run_overview

    overview = run_overview(samples._root_dataset, run_key, num_thumbnails=1)
    h = overview["header"]
    return {
        "num_clusters": h["num_clusters"],
        "num_clustered": h["num_clustered"],
        "num_noise": h["num_noise"],
        "objective": h["objective"],
        "stability": h["stability"],
        "clusters": [
            {
                "cluster": r["cluster"], "size": r["size"], "name": r["name"], "stability": r["stability"],
                "representative": r["thumbnails"][0]["id"] if r["thumbnails"] else None,
                "representative_filepath": r["thumbnails"][0]["filepath"] if r["thumbnails"] else None,
            }
            for r in overview["clusters"]
        ],
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
    return writer.rename_run(samples, run_key, new_run_key)


def get_clustering_config_fields(samples, run_key):
    config = cr.get_clustering_run_config(samples, run_key)
    return {k: getattr(config, k) for k in cr.FIELD_KEYS if getattr(config, k, None)}


def delete_run(samples, run_key):
    """Deletes a run, its results and its fields (also a run whose last write
    was interrupted)."""
    return writer.delete_run(samples, run_key)
