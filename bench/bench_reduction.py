"""Cost of the nonlinear reduction at scale: UMAP to 5-d (cosine, 15 neighbours,
min_dist 0) against L2 + PCA to 64-d, measured in the same run.

    .venv/bin/python bench/bench_reduction.py [--sizes 10000,30000,100000] [--photos-dir DIR]

Features: EfficientNet-Lite0 embeddings of the photo collections
(``bench/photos.py``; skipped with a message when absent), resampled with
noise to each size (rows drawn with replacement plus Gaussian noise of 0.25
times each coordinate's spread, clipped at 0 as the pooled ReLU6 features
are). Per size: L2+PCA64 fit + transform, UMAP fitted on the raw features and
on the L2+PCA64 features, and each fitted UMAP's transform of 10,000 new
rows. Then the cost at 1,000,000 samples of "fit on a sample of S, transform
the rest" (each measured fit plus the measured transform rate, scaled
linearly), against L2+PCA64 fitted on the sample and applied to every row.
UMAP runs on both cores (no random_state); its numba compilation is done
once before timing (fits of 5,000 rows, raw and reduced). UMAP's layout runs
500 epochs up to 10,000 rows and 200 above, so its fit time is not linear in n.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import clustering  # noqa: E402,F401  (first: OpenMP policy)
import photos  # noqa: E402  (bench/photos.py)
from common import table  # noqa: E402  (bench/common.py)

TARGET_N = 1_000_000
NEW_ROWS = 10_000


def log(message):
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def real_features(directory):
    """Lite0 embeddings of every non-held-out photo collection, stacked; None when absent."""
    root = photos.photos_dir(directory)
    records = photos.collections(root)
    if not records:
        return None
    return np.concatenate([photos.embeddings(root, n, r, photos.MODELS[0])[0] for n, r in records.items()])


def resample(X, n, rng):
    """``n`` noisy copies of rows of ``X`` (see the module docstring)."""
    rows = X[rng.integers(0, len(X), n)]
    noise = rng.standard_normal(rows.shape, dtype=np.float32) * (0.25 * X.std(axis=0))
    return np.maximum(rows + noise, 0, dtype=np.float32)


def timed(fn, *args):
    """(fn(*args), seconds)."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def pca_pipeline():
    """The plugin's L2 + PCA to 64-d."""
    from clustering.features.transform import FeatureTransform

    return FeatureTransform(normalize=True, reduction="pca", n_components=64, random_state=0)


def umap_model():
    """UMAP to 5-d as the photos benchmark runs it, on both cores."""
    import umap

    return umap.UMAP(n_components=5, metric="cosine", n_neighbors=15, min_dist=0.0, n_jobs=-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,30000,100000", help="fit sizes S")
    parser.add_argument("--photos-dir", help="the photo collections (see bench/photos.py)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = real_features(args.photos_dir)
    if base is None:
        print(f"(reduction skipped: no photo collections in {os.path.abspath(photos.photos_dir(args.photos_dir))}; "
              "build them with bench/fetch_photos.py)")
        return
    rng = np.random.default_rng(0)
    new = resample(base, NEW_ROWS, rng)
    warm = resample(base, 5000, rng)  # above 4096 rows UMAP switches to NN-descent: compile that too
    _, compile_s = timed(lambda: [umap_model().fit(F).transform(F[:100])
                                  for F in (warm, pca_pipeline().fit_transform(warm))])
    log(f"UMAP compiled in {compile_s:.0f} s; {len(base)} real rows, d={base.shape[1]}")
    rows, estimates = [], []
    for n in sizes:
        X = resample(base, n, rng)
        transform = pca_pipeline()
        P, pca_fit = timed(transform.fit_transform, X)
        _, pca_new = timed(transform.transform, new)
        raw, umap_raw_fit = timed(umap_model().fit, X)
        _, umap_raw_new = timed(raw.transform, new)
        log(f"n={n}: UMAP on raw fitted in {umap_raw_fit:.0f} s")
        reduced, umap_pca_fit = timed(umap_model().fit, P)
        _, umap_pca_new = timed(lambda: reduced.transform(transform.transform(new)))
        log(f"n={n}: UMAP on L2+PCA64 fitted in {umap_pca_fit:.0f} s")
        log(f"n={n}: L2+PCA64 fit {pca_fit:.2f} s, transform {pca_new:.3f} s; UMAP transform "
            f"{umap_raw_new:.1f} s (raw), {umap_pca_new:.1f} s (L2+PCA64) per {NEW_ROWS:,} rows")
        rows.append([f"{n:,}", f"{pca_fit:.2f} s", f"{pca_new:.3f} s", f"{umap_raw_fit:.1f} s",
                     f"{umap_raw_new:.1f} s", f"{pca_fit + umap_pca_fit:.1f} s", f"{umap_pca_new:.1f} s",
                     f"{umap_raw_fit / pca_fit:.0f}x", f"{(pca_fit + umap_pca_fit) / pca_fit:.0f}x"])
        rest = (TARGET_N - n) / NEW_ROWS
        pca_total = pca_fit + rest * pca_new
        umap_raw_total = umap_raw_fit + rest * umap_raw_new
        umap_pca_total = pca_fit + umap_pca_fit + rest * umap_pca_new
        estimates.append([f"{n:,}", f"{pca_total:.0f} s", f"{umap_raw_total / 60:.1f} min",
                          f"{umap_raw_total / pca_total:.0f}x", f"{umap_pca_total / 60:.1f} min",
                          f"{umap_pca_total / pca_total:.0f}x"])
    table(f"Reduction cost, {base.shape[1]}-d Lite0 features resampled with noise (2 cores); "
          f"transform of {NEW_ROWS:,} new rows",
          ["fit rows S", "L2+PCA64 fit", "L2+PCA64 transform", "UMAP5 fit (raw)", "UMAP5 transform (raw)",
           "L2+PCA64+UMAP5 fit", "L2+PCA64+UMAP5 transform", "UMAP raw / PCA (fit)",
           "PCA+UMAP / PCA (fit)"], rows)
    table(f"Estimated reduction of {TARGET_N:,} samples: fit on S, transform the rest "
          f"(measured fit + measured rate per {NEW_ROWS:,} rows)",
          ["fit rows S", "L2+PCA64", "UMAP5 (raw)", "UMAP raw / PCA", "L2+PCA64+UMAP5",
           "PCA+UMAP / PCA"], estimates)
    print(f"\n(UMAP's numba compilation, once per process: {compile_s:.0f} s)")


if __name__ == "__main__":
    main()
