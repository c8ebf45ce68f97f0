"""Labelled photo collections and the feature pipelines compared on them
(``bench_quality.py --sections photos``, ``bench_reduction.py``).

The collections are built by ``bench/fetch_photos.py`` into a folder found as
``--photos-dir``, else ``$IMGCLUST_PHOTOS_DIR``, else ``<repo>/../shared/data/photos``.
Embeddings are computed once per collection and model (fp32) and cached under
``bench/results/``.
"""

import csv
import json
import os
import time
from collections import Counter

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS = os.path.join(BENCH_DIR, "results")
PHOTOS_ENV = "IMGCLUST_PHOTOS_DIR"
MODELS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


# ------------------------------------------------------------------ data
def photos_dir(path=None):
    """The folder of the collections: ``path``, the environment variable, or
    ``<repo>/../shared/data/photos``."""
    return path or os.environ.get(PHOTOS_ENV) or os.path.join(REPO_ROOT, "..", "shared", "data", "photos")


def collections(root, heldout=False):
    """{name: record} of the collections in ``root`` (collections.json): the
    held-out ones with ``heldout=True``, the others otherwise; None when the
    folder has none."""
    index = os.path.join(root, "collections.json")
    if not os.path.isfile(index):
        return None
    with open(index) as f:
        records = json.load(f)
    return {n: r for n, r in records.items() if bool(r.get("heldout")) == heldout}


def read_labels(root, name):
    """(absolute image paths, {level: labels array}) of one collection."""
    with open(os.path.join(root, name, "labels.csv"), newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    paths = [os.path.join(root, name, r[0]) for r in rows]
    return paths, {level: np.array([r[i] for r in rows]) for i, level in enumerate(header) if i}


def embeddings(root, name, record, model):
    """(X float32 (n, 1280), {level: labels}) of a collection, cached per
    collection, source commit, size and model."""
    from clustering.features.backbones import embed_files

    paths, levels = read_labels(root, name)
    key = f"photos-{name}-{record['commit'][:10]}-{len(paths)}-{model}"
    path = os.path.join(RESULTS, f"{key}.npz")
    if os.path.exists(path):
        return np.load(path)["X"], levels
    X, failed = embed_files(paths, model, precision="fp32")
    if failed:
        raise RuntimeError(f"{len(failed)} images of {name} failed to embed: {list(failed.values())[:3]}")
    os.makedirs(RESULTS, exist_ok=True)
    np.savez_compressed(path, X=X)
    return X, levels


# ------------------------------------------------------------------ preprocessing
def l2(X):
    """Unit rows, as the plugin's ``normalize=True`` does."""
    from clustering.features.transform import FeatureTransform

    return FeatureTransform(normalize=True).fit_transform(X)


def signed_sqrt(X):
    """Power normalization sign(x) sqrt(|x|)."""
    return np.sign(X) * np.sqrt(np.abs(X))


def pca(X, n_components, seed, whiten=False):
    """PCA to ``n_components`` (a fraction: enough components for that share of
    the variance); the plugin's FeatureTransform for a plain integer."""
    if isinstance(n_components, int) and not whiten:
        from clustering.features.transform import FeatureTransform

        return FeatureTransform(reduction="pca", n_components=min(n_components, *X.shape),
                                random_state=seed).fit_transform(X)
    from sklearn.decomposition import PCA

    solver = "full" if isinstance(n_components, float) else "auto"
    return PCA(n_components, whiten=whiten, svd_solver=solver, random_state=seed).fit_transform(X).astype(np.float32)


def umap_5d(X, seed, n_components=5):
    """UMAP to 5 dimensions, cosine metric, 15 neighbours, min_dist 0."""
    import umap

    reducer = umap.UMAP(n_components=n_components, metric="cosine", n_neighbors=15, min_dist=0.0,
                        random_state=seed, n_jobs=1)  # a seed makes UMAP single-threaded anyway
    return reducer.fit_transform(X).astype(np.float32)


#: name -> preprocessing(X, seed); "raw" is what compute_clusters does by default
PREPROCESSING = {
    "raw": lambda X, seed: X,
    "L2": lambda X, seed: l2(X),
    "sqrt+L2": lambda X, seed: l2(signed_sqrt(X)),
    "center+L2": lambda X, seed: l2(X - X.mean(axis=0)),
    "L2+PCA32": lambda X, seed: pca(l2(X), 32, seed),
    "L2+PCA64": lambda X, seed: pca(l2(X), 64, seed),
    "L2+PCA128": lambda X, seed: pca(l2(X), 128, seed),
    "L2+PCA90%": lambda X, seed: pca(l2(X), 0.9, seed),
    "L2+PCA64+whiten": lambda X, seed: pca(l2(X), 64, seed, whiten=True),
    "L2+PCA64+L2": lambda X, seed: l2(pca(l2(X), 64, seed)),
    "sqrt+L2+PCA64+L2": lambda X, seed: l2(pca(l2(signed_sqrt(X)), 64, seed)),
    "UMAP5": lambda X, seed: umap_5d(X, seed),
    "L2+PCA64+UMAP5": lambda X, seed: umap_5d(pca(l2(X), 64, seed), seed),
}


# ------------------------------------------------------------------ clustering
def ours(F, k, seed, n_init=10):
    """Labels of the plugin's engine: squared-loss GeneralizedKMeans."""
    from clustering import GeneralizedKMeans

    return GeneralizedKMeans(k, loss="squared", n_init=n_init, random_state=seed).fit(F).labels_


def sklearn_kmeans(F, k, seed, n_init=10):
    """scikit-learn KMeans (lloyd, k-means++) with as many restarts as ours, on
    float64 features (its float32 path was 3x slower on the benchmark machine)."""
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=n_init, random_state=seed).fit(F.astype(np.float64)).labels_


def hdbscan(F, k, seed):
    """scikit-learn HDBSCAN with the plugin's defaults (k unused; noise = -1)."""
    from sklearn.cluster import HDBSCAN

    return HDBSCAN(min_cluster_size=5, copy=True).fit_predict(F)


#: name -> (preprocessing, clustering(F, k, seed)); "defaults" = compute_clusters today
CANDIDATES = {
    "defaults (raw)": ("raw", ours),
    **{p: (p, ours) for p in PREPROCESSING if p != "raw"},
    "UMAP5+HDBSCAN": ("UMAP5", hdbscan),
    "sklearn raw": ("raw", sklearn_kmeans),
    "sklearn L2": ("L2", sklearn_kmeans),
    "sklearn L2+PCA64": ("L2+PCA64", sklearn_kmeans),
}
BASELINES = ("sklearn raw", "sklearn L2", "sklearn L2+PCA64")


def scores(labels, truth):
    """(NMI, ARI); HDBSCAN noise (-1) counts as one more cluster."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return normalized_mutual_info_score(truth, labels), adjusted_rand_score(truth, labels)


def evaluate(X, levels, seeds, candidates=CANDIDATES, log=None):
    """{candidate: {level: [(nmi, ari, seconds, noise fraction, clusters)] per seed}}.

    Each seed preprocesses once (the seed also drives PCA's and UMAP's
    randomness) and clusters at every label level with k = its number of
    classes; seconds = preprocessing + the finest level's fit."""
    out, cache = {}, {}
    uses = Counter(prep for prep, _ in candidates.values())
    for name, (prep, cluster) in candidates.items():
        out[name] = {level: [] for level in levels}
        for seed in seeds:
            if (prep, seed) not in cache:
                start = time.perf_counter()
                F = PREPROCESSING[prep](X, seed)
                cache[(prep, seed)] = (F, time.perf_counter() - start)
            F, prep_seconds = cache[(prep, seed)]
            for i, (level, truth) in enumerate(levels.items()):
                start = time.perf_counter()
                labels = cluster(F, len(set(truth)), seed)
                fit_seconds = time.perf_counter() - start
                nmi, ari = scores(labels, truth)
                noise = float(np.mean(labels == -1))
                n_clusters = len(set(labels.tolist()) - {-1})
                seconds = prep_seconds + fit_seconds if i == 0 else float("nan")
                out[name][level].append((nmi, ari, seconds, noise, n_clusters))
        uses[prep] -= 1
        if not uses[prep]:  # no later candidate needs these features
            cache = {key: v for key, v in cache.items() if key[0] != prep}
        if log:
            log(f"{name} done")
    return out
