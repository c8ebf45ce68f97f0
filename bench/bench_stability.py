"""Benchmark of per-cluster stability (clustering.engine.stability): its cost against
the fit's, and what it says on blobs with a noise cluster and on real embeddings.

    .venv/bin/python bench/bench_stability.py [--quick] [--repeats N]

1. Cost: the plugin's default fit (squared loss, n_init=10, max_iter=100,
   tol=1e-4) of 100,000 x 512 Gaussian blobs (well separated: spread 1.0, and
   overlapping: spread 0.3) at k=10 and k=100, against ``kmeans_stability`` with
   its defaults (20 refits on subsamples of min(50%, 10,000) points, 3 restarts
   each); best of interleaved rounds, ratio = stability time / fit time.
2. Blobs plus a uniform-noise group (4 Gaussian blobs in 2-d and uniform noise
   over their bounding box, k=5, 5 seeds): the score of the cluster made of
   noise against the blobs' scores, from scratch and, to show the bias that
   ``kmeans_stability`` avoids, with refits warm started from the run's centers.
3. Real embeddings cached by bench/bench_quality.py under ``bench/results/``
   (EfficientNet-Lite0 features of the demo set and hymenoptera; skipped when
   absent): per-cluster stability next to the cluster's majority class and
   purity, with 3 restarts per refit (the default) and with 1 and 10.
"""

import argparse
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from clustering import GeneralizedKMeans  # noqa: E402  (first: OpenMP policy)
from clustering.engine.methods import GeneralizedKMeansMethod  # noqa: E402
from clustering.engine.stability import cluster_stability, kmeans_stability  # noqa: E402
from bench_engine import blobs, fmt_time, interleaved  # noqa: E402  (bench/)
from common import table  # noqa: E402

RESULTS = os.path.join(REPO_ROOT, "bench", "results")
MODEL = "efficientnet-lite0"


def plugin_fit(X, k, seed=None):
    """The plugin's default generalized k-means fit (squared loss)."""
    params = dict(GeneralizedKMeansMethod.defaults)
    if seed is not None:
        params["random_state"] = seed
    return GeneralizedKMeans(k, **params).fit(X)


def cost_section(quick, repeats):
    n, d = (20_000, 512) if quick else (100_000, 512)
    rows = []
    for spread in (1.0, 0.3):
        for k in (10, 100):
            X = blobs(n, d, k, seed=5, spread=spread).numpy()
            fitted = plugin_fit(X, k)
            runs = {"fit": lambda: plugin_fit(X, k),
                    "stability": lambda: kmeans_stability(fitted, X, random_state=0)}
            best, out = interleaved(runs, repeats)
            result = out["stability"]
            rows.append([f"{n:,} x {d}", spread, k, fitted.n_iter_, fmt_time(best["fit"]),
                         fmt_time(best["stability"]), f"{result.sample_size:,}",
                         f"**{best['stability'] / best['fit']:.2f}x**", f"{result.score:.3f}",
                         f"{np.nanmin(result.scores):.3f}"])
            print(f"  [cost] spread {spread}, k={k} done", file=sys.stderr, flush=True)
    table("Stability vs the plugin's default fit (squared, n_init=10; stability: 20 refits, "
          "3 restarts each)",
          ["n x d", "spread", "k", "fit iterations (best restart)", "fit", "stability",
           "points per refit", "stability / fit", "run score", "lowest cluster"], rows)


def blobs_and_noise(seed, per_blob=400, noise=300, separation=10.0):
    """4 Gaussian blobs (2-d) and uniform noise over their bounding box (label 4)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]]) * separation
    X = np.concatenate([c + rng.normal(size=(per_blob, 2)) for c in centers])
    uniform = rng.uniform(X.min(0), X.max(0), size=(noise, 2))
    y = np.r_[np.repeat(np.arange(4), per_blob), np.full(noise, 4)]
    return np.concatenate([X, uniform]).astype(np.float32), y


def noise_section():
    """Refits from scratch (``kmeans_stability``) and, for comparison, refits
    warm started from the run's centers."""
    rows = []
    for seed in range(5):
        X, y = blobs_and_noise(seed)
        km = plugin_fit(X, 5, seed)
        result = kmeans_stability(km, X, random_state=seed)

        def warm(X_sub):
            return GeneralizedKMeans(5, init=km.cluster_centers_).fit(X_sub).labels_

        warm_scores = cluster_stability(X, km.labels_, warm, random_state=seed).scores
        sizes = np.bincount(km.labels_, minlength=5)
        noise_share = np.bincount(km.labels_, weights=y == 4, minlength=5) / sizes
        noise = int(np.argmax(noise_share))
        others = np.delete(result.scores, noise)
        rows.append([seed, f"{result.scores[noise]:.3f} ({sizes[noise]} points, "
                     f"{noise_share[noise]:.0%} noise)",
                     f"{others.min():.3f}-{others.max():.3f}",
                     "yes" if result.scores[noise] < others.min() else "no",
                     f"{result.score:.3f}", f"{warm_scores[noise]:.3f}",
                     f"{np.delete(warm_scores, noise).min():.3f}"])
    table("4 blobs + uniform noise (2-d, 1,900 points, k=5): the noise cluster's score",
          ["seed", "noise cluster", "blob clusters", "lowest", "run score",
           "warm-started refits: noise cluster", "warm-started: lowest blob"], rows)


def real_section(repeats):
    sets = {}
    for name, label in (("demo", "demo: 5 classes"), ("hymenoptera", "hymenoptera")):
        path = os.path.join(RESULTS, f"{name}-{MODEL}.npz")
        if os.path.exists(path):
            data = np.load(path, allow_pickle=False)
            sets[label] = (data["X"], data["y"])
    if len(sets) == 2:
        (Xd, yd), (Xh, yh) = sets["demo: 5 classes"], sets["hymenoptera"]
        sets["demo + hymenoptera: 7 groups"] = (np.concatenate([Xd, Xh]), np.concatenate([yd, yh]))
    if not sets:
        print("\n(no cached embeddings under bench/results/: run bench/bench_quality.py first)")
        return
    rows, costs = [], []
    for name, (X, y) in sets.items():
        classes, truth = np.unique(y, return_inverse=True)
        k = len(classes)
        fitted = plugin_fit(X, k)
        best, out = interleaved({"fit": lambda: plugin_fit(X, k),
                                 "stability": lambda: kmeans_stability(fitted, X, random_state=0)},
                                repeats)
        result = out["stability"]
        other = {n_init: kmeans_stability(fitted, X, n_init=n_init, random_state=0)
                 for n_init in (1, 10)}
        costs.append([name, f"{len(X)} x {X.shape[1]}", k, fmt_time(best["fit"]),
                      fmt_time(best["stability"]), f"{best['stability'] / best['fit']:.2f}x",
                      f"{result.score:.3f}", f"{other[1].score:.3f}", f"{other[10].score:.3f}"])
        for j in np.argsort(result.scores):
            members = truth[fitted.labels_ == j]
            counts = np.bincount(members, minlength=k)
            rows.append([name, j, len(members), classes[np.argmax(counts)],
                         f"{counts.max() / max(1, len(members)):.2f}", f"{result.scores[j]:.3f}",
                         f"{other[1].scores[j]:.3f}", f"{other[10].scores[j]:.3f}"])
    table("Real embeddings (EfficientNet-Lite0, plugin defaults, k = number of classes): cost",
          ["data", "n x d", "k", "fit", "stability", "stability / fit", "run score",
           "run score, 1 restart per refit", "10 restarts"], costs)
    table("Real embeddings: each cluster's stability (lowest first) against its purity",
          ["data", "cluster", "size", "majority class", "purity", "stability",
           "1 restart per refit", "10 restarts"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 samples instead of 100,000")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best is kept)")
    args = parser.parse_args()
    start = time.perf_counter()
    GeneralizedKMeans(3, max_iter=2).fit(blobs(300, 8, 3).numpy())  # kernels loaded
    noise_section()
    real_section(args.repeats)
    cost_section(args.quick, args.repeats)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
