"""Registry of clustering methods: generalized loss-based k-means and the
usual scikit-learn algorithms, behind one interface.

Every method maps a feature matrix to a :class:`ClusteringOutput` with labels
(``-1`` = noise), per-cluster centers and each sample's loss to its center.
For scikit-learn methods the center is the cluster mean and the loss the
squared Euclidean distance to it.
"""

from dataclasses import dataclass, field

import numpy as np

from .kmeans import GeneralizedKMeans
from .losses import get_loss


@dataclass
class MethodParam:
    """How a method's parameter appears in the App's forms. ``kind``: ``"int"``,
    ``"float"``, ``"str"``, ``"bool"``, ``"choice"`` (one of ``choices``),
    ``"loss"`` (a registered loss) or ``"loss_param"`` (that loss's
    parameter, shown when it has one); the default comes from the method's
    ``defaults``."""

    name: str
    label: str
    kind: str
    minimum: float = None
    choices: tuple = ()
    help: str = None


@dataclass
class ClusteringOutput:
    labels: np.ndarray
    centers: np.ndarray
    sample_losses: np.ndarray
    objective: float
    objective_history: list = field(default_factory=list)
    n_iter: int = None
    params: dict = field(default_factory=dict)


class ClusteringMethod:
    """Base class: ``name``, ``label``, ``needs_k``, ``defaults`` (the
    method's own parameters and their default values), ``form`` (the
    :class:`MethodParam` of those shown in the App's forms, in order) and
    ``can_assign`` (whether its clusters are nearest-center clusters, so
    that samples outside a fit are assigned to the center of smallest loss by
    :class:`clustering.runs.model.RunModel`). A method registered with
    :func:`register_method` gets its form from ``form``."""

    name = None
    label = None
    needs_k = True
    defaults = {}
    form = ()
    can_assign = False

    def resolve_params(self, params):
        """Defaults updated with ``params``; unknown names raise ``ValueError``."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"Parameter(s) {unknown} do not apply to method '{self.name}'; "
                f"its parameters are {sorted(self.defaults)}"
            )
        resolved = dict(self.defaults)
        resolved.update(params)
        return resolved

    def fit(self, X, k, params, progress=None):
        raise NotImplementedError


def _mean_centers(X, labels, k):
    centers = np.zeros((k, X.shape[1]), dtype=np.float64)
    counts = np.bincount(labels[labels >= 0], minlength=k)
    np.add.at(centers, labels[labels >= 0], X[labels >= 0])
    centers /= np.maximum(counts, 1)[:, None]
    return centers.astype(np.float32)


class _MeanCentersMethod(ClusteringMethod):
    """A method whose clusters are represented by their means (k-means)."""

    can_assign = True


def _mean_output(X, labels, params, n_iter=None):
    """Output for methods whose center is the cluster mean (squared loss)."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    centers = _mean_centers(X, labels, k)
    losses = np.full(len(X), np.nan)
    member = labels >= 0
    losses[member] = ((X[member] - centers[labels[member]]) ** 2).sum(axis=1)
    return ClusteringOutput(
        labels=labels,
        centers=centers,
        sample_losses=losses,
        objective=float(np.nansum(losses)),
        n_iter=n_iter,
        params=params,
    )


class GeneralizedKMeansMethod(ClusteringMethod):
    name = "generalized_kmeans"
    can_assign = True
    label = "Generalized k-means (loss-based)"
    defaults = {
        "loss": "squared",
        "loss_param": None,
        "init": "k-means++",
        "n_init": 10,  # bench/README.md, "Defaults from evidence"
        "max_iter": 100,
        "tol": 1e-4,
        "device": "auto",
        "random_state": 51,
    }
    form = (
        MethodParam("loss", "Loss", "loss"),
        MethodParam("loss_param", "Loss parameter", "loss_param"),
        MethodParam("n_init", "Restarts (best objective kept)", "int", minimum=1),
        MethodParam("max_iter", "Max iterations", "int", minimum=1),
        MethodParam("device", "Device", "choice", choices=("auto", "cpu", "cuda")),
        MethodParam("random_state", "Seed", "int"),
    )

    def resolve_params(self, params):
        params = super().resolve_params(params)
        get_loss(params["loss"])  # raises with the list of valid losses
        if params["loss_param"] is not None and not params["loss_param"] > 0:
            raise ValueError(
                f"loss_param must be > 0 for loss '{params['loss']}'; got {params['loss_param']}"
            )
        GeneralizedKMeans(n_clusters=1, **params)._check_hyperparameters()  # n_init, max_iter, tol
        return params

    def fit(self, X, k, params, progress=None):
        model = GeneralizedKMeans(n_clusters=k, **params).fit(X, progress=progress)
        used = dict(
            params,
            loss_param=model.loss_param_,
            loss_param_rule=model.loss_param_rule_,
            device=str(getattr(model, "device_", params["device"])),
        )
        return ClusteringOutput(
            labels=model.labels_,
            centers=model.cluster_centers_,
            sample_losses=model.sample_losses_,
            objective=float(model.objective_),
            objective_history=[float(v) for v in model.objective_history_],
            n_iter=int(model.n_iter_),
            params=used,
        )


class KMeansMethod(_MeanCentersMethod):
    name = "kmeans"
    label = "K-means (scikit-learn)"
    defaults = {"n_init": 3, "max_iter": 300, "tol": 1e-4, "random_state": 51}
    form = (
        MethodParam("n_init", "Restarts", "int", minimum=1),
        MethodParam("max_iter", "Max iterations", "int", minimum=1),
        MethodParam("random_state", "Seed", "int"),
    )

    def fit(self, X, k, params, progress=None):
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=k, **params).fit(X)
        return _mean_output(X, model.labels_, params, n_iter=int(model.n_iter_))


class MiniBatchKMeansMethod(_MeanCentersMethod):
    name = "minibatch_kmeans"
    label = "Mini-batch k-means (scikit-learn)"
    defaults = {"batch_size": 1024, "n_init": 3, "max_iter": 100, "random_state": 51}
    form = (
        MethodParam("n_init", "Restarts", "int", minimum=1),
        MethodParam("max_iter", "Max iterations", "int", minimum=1),
        MethodParam("batch_size", "Batch size", "int", minimum=1),
        MethodParam("random_state", "Seed", "int"),
    )

    def fit(self, X, k, params, progress=None):
        from sklearn.cluster import MiniBatchKMeans

        model = MiniBatchKMeans(n_clusters=k, **params).fit(X)
        return _mean_output(X, model.labels_, params, n_iter=int(model.n_iter_))


class BirchMethod(ClusteringMethod):
    name = "birch"
    label = "Birch (scikit-learn)"
    defaults = {"threshold": 0.5, "branching_factor": 50}
    form = (
        MethodParam("threshold", "Threshold (subcluster radius)", "float"),
        MethodParam("branching_factor", "Branching factor", "int", minimum=2),
    )

    def fit(self, X, k, params, progress=None):
        from sklearn.cluster import Birch

        labels = Birch(n_clusters=k, **params).fit_predict(X)
        return _mean_output(X, labels, params)


class AgglomerativeMethod(ClusteringMethod):
    name = "agglomerative"
    label = "Agglomerative (scikit-learn)"
    defaults = {"linkage": "ward"}
    form = (MethodParam("linkage", "Linkage", "choice", choices=("ward", "complete", "average", "single")),)

    def fit(self, X, k, params, progress=None):
        from sklearn.cluster import AgglomerativeClustering

        labels = AgglomerativeClustering(n_clusters=k, **params).fit_predict(X)
        return _mean_output(X, labels, params)


class HDBSCANMethod(ClusteringMethod):
    name = "hdbscan"
    label = "HDBSCAN (scikit-learn; noise = -1)"
    needs_k = False
    defaults = {"min_cluster_size": 5, "min_samples": None}
    form = (
        MethodParam("min_cluster_size", "Min cluster size", "int", minimum=2),
        MethodParam("min_samples", "Min samples (optional)", "int", minimum=1),
    )

    def fit(self, X, k, params, progress=None):
        from sklearn.cluster import HDBSCAN

        labels = HDBSCAN(**params).fit_predict(X)
        return _mean_output(X, labels, params)


_METHODS = {
    m.name: m
    for m in (
        GeneralizedKMeansMethod(),
        KMeansMethod(),
        MiniBatchKMeansMethod(),
        BirchMethod(),
        AgglomerativeMethod(),
        HDBSCANMethod(),
    )
}


def available_methods():
    """Names of the registered clustering methods."""
    return list(_METHODS)


def get_method(name):
    if name not in _METHODS:
        raise ValueError(f"Unknown method '{name}'; choose one of {available_methods()}")
    return _METHODS[name]


def register_method(method):
    """Adds a :class:`ClusteringMethod` instance to the registry."""
    _METHODS[method.name] = method
    return method
