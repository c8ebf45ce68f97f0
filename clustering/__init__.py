"""Image clustering for FiftyOne with generalized loss-based k-means.

The engine (:class:`GeneralizedKMeans` and the loss registry) depends only on
numpy and torch, so it runs where FiftyOne is not installed. The FiftyOne-facing
functions (``compute_clusters``, run management, embeddings, ...) are imported
lazily on first use.
"""

import importlib
import os

# Before anything loads torch or numba: idle OpenMP threads then sleep instead of
# spinning, so torch's and numba's pools do not steal each other's cores (an
# explicit user setting wins; see clustering/_kernels.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .losses import Loss, available_losses, get_loss, register_loss  # noqa: E402
from .kmeans import GeneralizedKMeans  # noqa: E402

# public name -> submodule that defines it (imported on first access)
_LAZY = {
    "compute_clusters": "api",
    "get_run_info": "api",
    "load_run_view": "api",
    "rename_run": "api",
    "delete_run": "api",
    "load_clustering_results": "api",
    "check_run": "writer",
    "subcluster": "tree",
    "cluster_tree": "tree",
    "RunBusyError": "writer",
    "RunInterruptedError": "writer",
    "available_methods": "methods",
    "compute_embeddings": "embeddings",
    "available_models": "models",
    "label_clusters": "labeling",
    "set_cluster_name": "curation",
    "merge_clusters": "curation",
    "split_cluster": "curation",
    "assign_new_samples": "curation",
    "to_labels": "curation",
    "tag_cluster": "curation",
    "untag_cluster": "curation",
    "choose_k": "evaluation",
    "recommend_k": "selection",
    "evaluate_run": "evaluation",
    "compare_runs": "evaluation",
    "silhouette_analysis": "evaluation",
    "plot_silhouette": "evaluation",
    "visualize_run": "evaluation",
    "run_summary": "browse",
    "cluster_stability": "stability",
    "kmeans_stability": "stability",
    "feature_maps": "activations",
    "compute_feature_heatmaps": "activations",
}

__all__ = [
    "GeneralizedKMeans",
    "Loss",
    "available_losses",
    "get_loss",
    "register_loss",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
