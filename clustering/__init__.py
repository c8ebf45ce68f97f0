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
# explicit user setting wins; see clustering/engine/_kernels.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .engine.losses import Loss, available_losses, get_loss, register_loss  # noqa: E402
from .engine.kmeans import GeneralizedKMeans  # noqa: E402

# public name -> submodule that defines it (imported on first access)
_LAZY = {
    "compute_clusters": "runs.compute",
    "get_run_info": "runs.compute",
    "load_run_view": "runs.compute",
    "rename_run": "runs.compute",
    "delete_run": "runs.compute",
    "load_clustering_results": "runs.compute",
    "check_run": "runs.writer",
    "subcluster": "runs.tree",
    "cluster_tree": "runs.tree",
    "RunBusyError": "runs.writer",
    "RunInterruptedError": "runs.writer",
    "available_methods": "engine.methods",
    "compute_embeddings": "features.embeddings",
    "available_models": "features.models",
    "label_clusters": "naming.labeling",
    "set_cluster_name": "runs.curation",
    "merge_clusters": "runs.curation",
    "split_cluster": "runs.curation",
    "assign_new_samples": "runs.curation",
    "to_labels": "runs.curation",
    "tag_cluster": "runs.curation",
    "untag_cluster": "runs.curation",
    "choose_k": "runs.evaluation",
    "recommend_k": "engine.selection",
    "evaluate_run": "runs.evaluation",
    "compare_runs": "runs.evaluation",
    "silhouette_analysis": "runs.evaluation",
    "plot_silhouette": "runs.evaluation",
    "visualize_run": "runs.evaluation",
    "run_summary": "runs.browse",
    "cluster_stability": "engine.stability",
    "kmeans_stability": "engine.stability",
    "feature_maps": "features.activations",
    "compute_feature_heatmaps": "features.activations",
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
