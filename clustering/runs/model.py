"""A run's fitted model: how its features are made and where its clusters are.

:class:`RunModel` is the one implementation that maps samples to a run's
clusters: the streamed assignment of ``compute_clusters``,
``assign_new_samples``, the curation actions and the evaluation read their
features and assign through it. It holds

- the feature transform (the run's embeddings field, or the samples of a
  patches field, then its normalization / reduction,
  :class:`clustering.features.transform.FeatureTransform`);
- its clusters' centers (NaN rows for the ids a merge or split retired) and
  its loss with its parameter (squared for the scikit-learn methods).

It is built from a fit (:meth:`RunModel.fitted`) or from a stored run
(:meth:`RunModel.of`), whose config and results hold everything it needs.
"""

import copy
from collections import OrderedDict

import numpy as np

from ..features import transform as cf
from . import storage
from ..engine.losses import get_loss


#: UMAPs fitted again for stored runs, by dataset, run and fit (the last few)
_UMAPS = OrderedDict()
_UMAP_CACHE_SIZE = 4


class RunModel:
    """A run's features and clusters (see the module docstring)."""

    def __init__(self, loss, loss_param, centers, transform, embeddings_field=None, patches_field=None,
                 input_dim=None, run_key=None, method=None, method_params=None):
        self.method = method
        self.method_params = dict(method_params or {})
        self.loss = get_loss(loss or "squared")
        self.loss_param = loss_param
        self.centers = np.asarray(centers, dtype=np.float32)
        self.transform = transform
        self.embeddings_field = embeddings_field
        self.patches_field = patches_field
        self.input_dim = input_dim
        self.run_key = run_key
        self.umap_fit_ids = None  # the rows a UMAP reduction was fitted on
        self.umap_fit_coords = None  # and their coordinates (stored by runs since the UMAP default)
        self._predictor = None

    @classmethod
    def of(cls, results):
        """The model of a stored run (its :class:`clustering.runs.ClusteringResults`)."""
        config = results.config
        transform = cf.FeatureTransform.from_state(
            config, getattr(results, "pca_mean", None), getattr(results, "pca_components", None)
        )
        from ..engine.methods import get_method

        defaults = get_method(config.method).defaults if config.method else {}
        params = {n: getattr(config, n) for n in defaults if getattr(config, n, None) is not None}
        params.pop("device", None)  # where the run was computed is not part of the result
        model = cls(
            config.loss, config.loss_param, results.centers, transform,
            config.embeddings_field, config.patches_field,
            config.input_dim, results.key, config.method, params,
        )
        model.umap_fit_ids = getattr(results, "umap_fit_ids", None)
        model.umap_fit_coords = getattr(results, "umap_fit_coords", None)
        return model

    @classmethod
    def fitted(cls, out, transform):
        """The model of a fit: a method's output and the fitted transform."""
        params = out.params
        return cls(params.get("loss"), params.get("loss_param"), out.centers, transform)

    # ------------------------------------------------------------ clusters

    @property
    def live(self):
        """The ids of the clusters that exist (a finite center)."""
        return np.flatnonzero(np.isfinite(self.centers).all(axis=1))

    def _estimator(self):
        if self._predictor is None:
            from ..engine.kmeans import GeneralizedKMeans

            self._predictor = GeneralizedKMeans.from_centers(
                self.centers[self.live], self.loss.name, self.loss_param
            )
        return self._predictor

    def assign(self, X):
        """``(labels, losses)``: the live cluster of smallest loss for each row
        of ``X`` (features, as :meth:`features` gives them) and the loss to it."""
        if not len(X):
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        local, losses = self._estimator().assign(X)
        return self.live[local], losses.astype(np.float64)

    def losses(self, X):
        """``(n, k)`` loss of each row of ``X`` to each live cluster (columns
        in the order of :attr:`live`)."""
        return self._estimator().transform(X).astype(np.float64)

    def minimizers(self, X, labels, start):
        """``(centers, losses)``: each group's minimizer of its rows' summed
        loss (by the loss's center update from ``start``, one row per group;
        ``labels`` index them), and each row's loss to its group's center."""
        import torch

        C = self.loss.update_centers(
            torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), torch.from_numpy(labels.astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(start, dtype=np.float32)), self.loss_param,
        ).numpy().astype(np.float32)
        losses = self.loss.loss(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), torch.from_numpy(C[labels]), self.loss_param)
        return C, losses.double().numpy()

    def refit(self, X, k):
        """``(labels, centers, losses)`` of ``k`` new clusters of the rows
        ``X`` (the run's features): the run's method with its parameters,
        centers recomputed under the run's loss; ``labels`` are ``0..m-1``
        (m <= k when the method formed fewer)."""
        from ..engine.methods import get_method

        method = get_method(self.method)
        out = method.fit(X, int(k), method.resolve_params(dict(self.method_params)))
        parts, local = np.unique(np.asarray(out.labels), return_inverse=True)
        centers, losses = self.minimizers(X, local, np.asarray(out.centers, dtype=np.float32)[parts])
        return local, centers, losses

    # ------------------------------------------------------------ features

    def _field(self, action):
        """The embeddings field, refusing runs whose features cannot be rebuilt."""
        if not self.embeddings_field:
            raise ValueError(
                f"Run '{self.run_key}' was clustered on an embeddings array passed in Python, "
                f"not on a field, so {action} cannot read its features; store the array "
                "in a vector field and recompute the run with embeddings=<field>"
            )
        if self.transform.reduction == "umap" and self.transform._umap is None and not self.umap_fit_ids:
            raise ValueError(
                f"Run '{self.run_key}' reduced its embeddings with a UMAP whose fit it does not "
                f"record (it was computed by an earlier version), so {action} cannot map samples "
                "into its feature space; recompute the run"
            )
        if self.transform.reduction == "pca" and self.transform.pca_components_ is None:
            raise ValueError(f"Run '{self.run_key}' does not store its PCA; recompute the run")
        return self.embeddings_field

    def _raw(self, collection, ids, action):
        """The raw embeddings of ``ids`` of ``collection`` (samples, or
        labels of a patches view), in that order."""
        field = self._field(action)
        found, X, _ = storage.read_embeddings(collection, field)
        row = dict(zip(found, range(len(found))))
        lost = [i for i in ids if i not in row]
        if lost:
            raise ValueError(
                f"{len(lost)} samples of run '{self.run_key}' no longer exist or have no "
                f"embeddings in '{field}'; recompute the run"
            )
        X = X[[row[i] for i in ids]]
        expected = self.input_dim or X.shape[1]
        if X.shape[1] != expected:
            raise ValueError(
                f"The embeddings in '{field}' have dimension {X.shape[1]} but run "
                f"'{self.run_key}' clustered dimension {expected}; recompute the run"
            )
        return X

    def _collection(self, dataset, ids):
        """Where to read ``ids`` of the run: its dataset (the labels of its
        patches field), narrowed to them when they are few."""
        collection = dataset.to_patches(self.patches_field) if self.patches_field else dataset
        if len(ids) < len(collection) // 2:  # else reading them all is faster than selecting
            collection = collection.select(list(ids))
        return collection

    def _fit_umap_again(self, dataset, action):
        """The run's UMAP, fitted again on the rows it was fitted on (once per
        process and run state); returns {id: its coordinates}."""
        key = (str(dataset._doc.id), self.run_key, self.umap_fit_ids[0], len(self.umap_fit_ids), self.transform.random_state)
        if key not in _UMAPS:
            X = self._raw(self._collection(dataset, self.umap_fit_ids), self.umap_fit_ids, action)
            transform = copy.copy(self.transform)
            coords = transform.refit_umap(X)
            _UMAPS[key] = (transform._umap, dict(zip(self.umap_fit_ids, coords)))
            while len(_UMAPS) > _UMAP_CACHE_SIZE:
                _UMAPS.popitem(last=False)
        self.transform._umap, coords = _UMAPS[key]
        return coords

    def features(self, samples, ids=None, action="this action"):
        """``(ids, X)``: the run's features (its embeddings field, transformed
        as the run did) of the samples of ``samples`` that have them (labels,
        for a patches view), or of exactly ``ids`` in that order (an error
        names those without). A UMAP run's own fit rows get the coordinates
        they had in the run; other rows its mapping."""
        if ids is None:
            ids, _, _ = storage.read_embeddings(samples, self._field(action))
        ids = list(ids)
        X = self._raw(samples, ids, action)
        if self.transform.reduction != "umap":
            return ids, self.transform.transform(X)
        if self.umap_fit_coords is not None:  # stored: the UMAP is fitted again only to map other rows
            coords = dict(zip(self.umap_fit_ids, np.asarray(self.umap_fit_coords, dtype=np.float32)))
        else:
            coords = self._fit_umap_again(samples._root_dataset, action)
        out = np.empty((len(ids), self.transform.n_components), dtype=np.float32)
        fitted = np.array([i in coords for i in ids], dtype=bool)
        if fitted.any():
            out[fitted] = np.stack([coords[i] for i, f in zip(ids, fitted) if f])
        if (~fitted).any():
            if self.transform._umap is None:
                self._fit_umap_again(samples._root_dataset, action)
            out[~fitted] = self.transform.transform(X[~fitted])
        return ids, out

    def run_features(self, dataset, ids, action="this action"):
        """The features of the run's samples (labels, for a run on patches)
        ``ids`` of ``dataset``, in that order."""
        return self.features(self._collection(dataset, ids), ids, action)[1]
