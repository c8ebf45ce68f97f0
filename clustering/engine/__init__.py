"""The clustering engine: numpy, torch and numba only (no FiftyOne import).

- :mod:`.kmeans`: :class:`GeneralizedKMeans`, generalized loss-based k-means
  (scikit-learn's estimator API) and its CPU kernels (:mod:`._kernels`);
- :mod:`.losses`: the loss registry (``register_loss``);
- :mod:`.methods`: the clustering methods behind one interface (generalized
  k-means and scikit-learn's), with the parameters their forms show
  (``register_method``);
- :mod:`.metrics`, :mod:`.selection`, :mod:`.stability`: silhouettes and
  agreement scores, choosing k, per-cluster stability.
"""
