"""Benchmark of clustering quality: where each loss wins or loses, choosing k,
and the defaults (normalize, n_init) measured on real images.

    .venv/bin/python bench/bench_quality.py [--quick] [--sections blobs,real,choose_k,defaults,photos]
                                            [--photos-dir DIR] [--heldout]

Prints markdown tables (full run: a few minutes on 2 cores; ``--quick``: about
a minute); scores are means over seeds with the range in brackets.

1. ``blobs``: 5 Gaussian clusters (d=32, n=2000; ``clustering.datasets.
   contaminated_blobs``) clean, with 10% / 20% far outliers, and with 20% of
   the points given Cauchy noise. Inlier ARI (the contaminated points are not
   scored) and center error (mean distance of each true center to its matched
   fitted center) for every loss with its data-driven parameter ("default"),
   with the best of a grid of parameters around the inlier scale ("tuned"),
   and started at the true centers ("true init": isolates the seeding), all
   with GeneralizedKMeans' own defaults (one restart), against scikit-learn's
   KMeans (also one k-means++ restart).
2. ``real``: NMI against the labels on real features: digits pixels
   (scikit-learn), EfficientNet-Lite0 embeddings of the demo set (faces,
   non-faces and three textures, ``clustering.datasets``) and its parts,
   hymenoptera ants / bees, both together (7 groups) and a few thousand
   Fashion-MNIST images (Debian's ``dataset-fashion-mnist``), every loss with
   the plugin's defaults against scikit-learn KMeans with the squared loss's
   restarts and the same preprocessing.
3. ``choose_k``: the recommended k of ``clustering.choose_k`` (on arrays, no
   database) against the silhouette argmax of scikit-learn KMeans fits, on
   labelled sets whose number of classes is the truth.
4. ``defaults``: ``normalize`` off / on and ``n_init`` 1 / 3 / 10 for the
   squared loss, correntropy and Huber on the real image sets (NMI, mean of 3
   seeds).
5. ``photos``: labelled photo collections built by ``bench/fetch_photos.py``
   (``--photos-dir``, else ``$IMGCLUST_PHOTOS_DIR``, else
   ``<repo>/../shared/data/photos``; skipped with a message when absent),
   embedded with EfficientNet-Lite0, Lite1 and Lite2: NMI and ARI (mean and
   range over 5 seeds) at every label level (k = its number of classes) of
   today's defaults (squared GeneralizedKMeans, 10 restarts, raw features),
   every preprocessing candidate of ``bench/photos.py`` with the same engine,
   UMAP + HDBSCAN, and scikit-learn KMeans on raw, L2 and L2+PCA64 features;
   the time of each (preprocessing + fit). The ``choose_k`` section adds the
   collections whose classes fit its range of k. ``--heldout`` scores the
   held-out collections instead (only to check the chosen defaults).

Embeddings are computed once (fp32) and cached under ``bench/results/``.
"""

import argparse
import glob
import gzip
import json
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from clustering import GeneralizedKMeans, get_loss  # noqa: E402  (first: OpenMP policy)
from clustering.datasets import contaminated_blobs, separated_blobs  # noqa: E402
from common import table  # noqa: E402  (bench/common.py)
import photos  # noqa: E402  (bench/photos.py)

RESULTS = os.path.join(REPO_ROOT, "bench", "results")
HYMENOPTERA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "hymenoptera")  # beside the repository
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
MODEL = "efficientnet-lite0"
LOSSES = ["squared", "absolute", "huber", "pseudo_huber", "correntropy", "epsilon_insensitive",
          "geometric_median", "cosine"]
SCENARIOS = {  # name: (contamination, fraction)
    "clean": ("none", 0.0),
    "10% far outliers": ("far", 0.1),
    "20% far outliers": ("far", 0.2),
    "20% Cauchy noise": ("cauchy", 0.2),
}
BLOB_K, BLOB_D = 5, 32
# the inlier scale of the blobs (unit noise in d=32): the "tuned" grid is around it
INLIER_PARAM = {"huber": 1.345, "pseudo_huber": 1.345, "correntropy": np.sqrt(BLOB_D - 2 / 3),
                "epsilon_insensitive": 0.5 * np.sqrt(BLOB_D - 2 / 3)}
TUNING_GRID = (0.5, 1.0, 2.0, 4.0)


# ------------------------------------------------------------------ printing
def spread(values, digits=2):
    """'mean (min-max)' of a list of scores."""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"


def log(message):
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ scores
def inlier_ari(labels, truth, inliers):
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(truth[inliers], labels[inliers])


def center_error(fitted, true):
    """Mean distance of each true center to its fitted center (Hungarian matching)."""
    from scipy.optimize import linear_sum_assignment

    D = np.linalg.norm(true[:, None, :] - fitted[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(D)
    return float(D[rows, cols].mean())


def nmi(labels, truth):
    from sklearn.metrics import normalized_mutual_info_score

    return normalized_mutual_info_score(truth, labels)


# ------------------------------------------------------------------ section 1
def blob_fits(scenario, seeds, fit):
    """[(inlier ARI, center error)] of ``fit(X, seed)`` -> (labels, centers) per seed."""
    contamination, fraction = SCENARIOS[scenario]
    out = []
    for seed in seeds:
        X, y, inliers, centers = contaminated_blobs(
            k=BLOB_K, d=BLOB_D, contamination=contamination, fraction=fraction, random_state=seed)
        labels, fitted = fit(X, seed, centers)
        out.append((inlier_ari(labels, y, inliers), center_error(fitted, centers)))
    return out


def ours(loss, **params):
    def fit(X, seed, centers):
        if params.get("init") == "true":
            params_ = dict(params, init=centers.astype(np.float32))
        else:
            params_ = params
        km = GeneralizedKMeans(BLOB_K, loss=loss, random_state=seed, **params_).fit(X)
        return km.labels_, km.cluster_centers_
    return fit


def sklearn_kmeans(X, seed, centers):
    from sklearn.cluster import KMeans

    km = KMeans(BLOB_K, random_state=seed, n_init=1).fit(X)
    return km.labels_, km.cluster_centers_


def blobs_section(quick):
    seeds = range(3 if quick else 5)
    rows = []
    params_used = {}
    for scenario in SCENARIOS:
        base = blob_fits(scenario, seeds, sklearn_kmeans)
        rows.append([scenario, "scikit-learn KMeans", spread([a for a, _ in base]),
                     spread([e for _, e in base], 1), "", "", ""])
        for loss in LOSSES:
            default = blob_fits(scenario, seeds, ours(loss))
            tuned, tuned_param = "", ""
            if loss in INLIER_PARAM:
                best = None
                for factor in TUNING_GRID:
                    param = factor * INLIER_PARAM[loss]
                    res = blob_fits(scenario, seeds, ours(loss, loss_param=param))
                    score = np.mean([a for a, _ in res])
                    if best is None or score > best[0] + 1e-9:
                        best = (score, res, param)
                tuned, tuned_param = spread([a for a, _ in best[1]]), f"{best[2]:.3g}"
            true_init = "" if quick else spread(
                [a for a, _ in blob_fits(scenario, seeds, ours(loss, init="true"))])
            error = "n/a" if loss == "cosine" else spread([e for _, e in default], 1)
            rows.append([scenario, loss, spread([a for a, _ in default]), error, tuned,
                         tuned_param, true_init])
            contamination, fraction = SCENARIOS[scenario]
            if get_loss(loss).param_name:
                X = contaminated_blobs(k=BLOB_K, d=BLOB_D, contamination=contamination,
                                       fraction=fraction, random_state=0)[0]
                params_used[(scenario, loss)] = GeneralizedKMeans(
                    BLOB_K, loss=loss, random_state=0).fit(X).loss_param_
        log(f"blobs: {scenario} done")
    table(f"Blobs (k={BLOB_K}, d={BLOB_D}, n=2000, {len(seeds)} seeds): inlier ARI and center "
          "error, mean (min-max)",
          ["data", "loss", "inlier ARI (default)", "center error (default)", "inlier ARI (tuned)",
           "tuned parameter", "inlier ARI (true init)"], rows)
    losses = [loss for loss in LOSSES if get_loss(loss).param_name]
    table("Data-driven parameter on seed 0 (inlier scale: delta 1.345, sigma "
          f"{INLIER_PARAM['correntropy']:.2f}, epsilon {INLIER_PARAM['epsilon_insensitive']:.2f})",
          ["data"] + losses,
          [[s] + [f"{params_used[(s, loss)]:.3g}" for loss in losses] for s in SCENARIOS])


# ------------------------------------------------------------------ real data
def _cached(name, compute):
    path = os.path.join(RESULTS, f"{name}.npz")
    if os.path.exists(path):
        data = np.load(path, allow_pickle=False)
        return data["X"], data["y"]
    X, y = compute()
    os.makedirs(RESULTS, exist_ok=True)
    np.savez_compressed(path, X=X, y=y)
    return X, y


def _embed(paths):
    from clustering.features.backbones import embed_files

    X, failed = embed_files(paths, MODEL, precision="fp32")
    if failed:
        raise RuntimeError(f"{len(failed)} images failed to embed: {list(failed.values())[:3]}")
    return X


def demo_embeddings():
    def compute():
        from clustering.datasets import write_demo_images

        items = write_demo_images(os.path.join(RESULTS, "demo-images"))
        return _embed([p for p, _ in items]), np.array([c for _, c in items])

    return _cached(f"demo-{MODEL}", compute)


def hymenoptera_embeddings():
    def compute():
        paths = sorted(p for p in glob.glob(os.path.join(HYMENOPTERA, "**", "*"), recursive=True)
                       if p.lower().endswith((".jpg", ".jpeg")))
        labels = np.array([os.path.basename(os.path.dirname(p)) for p in paths])
        return _embed(paths), labels

    return _cached(f"hymenoptera-{MODEL}", compute)


def _idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist_embeddings(n=3000):
    """EfficientNet-Lite0 embeddings of the first ``n`` test images of Fashion-MNIST
    (written as PNG files, as a user's images would be)."""
    def compute():
        from PIL import Image

        images = _idx(os.path.join(FASHION_MNIST, "t10k-images-idx3-ubyte.gz"))[:n]
        labels = _idx(os.path.join(FASHION_MNIST, "t10k-labels-idx1-ubyte.gz"))[:n]
        folder = os.path.join(RESULTS, "fashion-mnist")
        os.makedirs(folder, exist_ok=True)
        paths = []
        for i, image in enumerate(images):
            path = os.path.join(folder, f"{i:05d}.png")
            if not os.path.exists(path):
                Image.fromarray(image).convert("RGB").save(path)
            paths.append(path)
        return _embed(paths), labels.astype(np.int64)

    if not os.path.isdir(FASHION_MNIST):
        log(f"skipping Fashion-MNIST: {FASHION_MNIST} missing "
            "(apt-get install dataset-fashion-mnist)")
        return None
    return _cached(f"fashion-mnist-{n}-{MODEL}", compute)


def real_sets(quick):
    """{name: (X, labels, k)}: labelled real feature sets."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    sets = {"digits (pixels)": (digits.data.astype(np.float32), digits.target, 10)}
    X, y = demo_embeddings()
    faces = np.isin(y, ["face", "non-face"])
    sets["demo: 5 classes"] = (X, y, 5)
    sets["demo: faces / non-faces"] = (X[faces], y[faces], 2)
    sets["demo: textures"] = (X[~faces], y[~faces], 3)
    sets["hymenoptera"] = (*hymenoptera_embeddings(), 2)
    Xh, yh = sets["hymenoptera"][:2]
    sets["demo + hymenoptera: 7 groups"] = (np.concatenate([X, Xh]), np.concatenate([y, yh]), 7)
    fashion = fashion_mnist_embeddings(1000 if quick else 3000)
    if fashion is not None:
        sets[f"Fashion-MNIST ({len(fashion[0])})"] = (*fashion, 10)
    return sets


def plugin_defaults(loss):
    """(normalize, n_init) that compute_clusters uses for ``loss`` when not given."""
    import inspect

    from clustering.runs.compute import compute_clusters
    from clustering.engine.methods import get_method

    normalize = inspect.signature(compute_clusters).parameters["normalize"].default
    return normalize, get_method("generalized_kmeans").resolve_params({"loss": loss})["n_init"]


def prepare(X, normalize):
    from clustering.features.transform import prepare_features

    return prepare_features(X, normalize)[0]


def nmi_of(X, y, k, loss, n_init, seeds, normalize):
    """NMI of each seed's fit (loss=None: scikit-learn KMeans)."""
    from sklearn.cluster import KMeans

    Xp = prepare(X, normalize)
    scores = []
    for seed in seeds:
        if loss is None:
            labels = KMeans(k, n_init=n_init, random_state=seed).fit(Xp).labels_
        else:
            labels = GeneralizedKMeans(k, loss=loss, n_init=n_init, random_state=seed).fit(Xp).labels_
        scores.append(nmi(labels, y))
    return scores


def real_section(quick, sets):
    normalize, squared_restarts = plugin_defaults("squared")
    seeds = range(3)
    rows = []
    for name, (X, y, k) in sets.items():
        base = nmi_of(X, y, k, None, squared_restarts, seeds, normalize)
        row = [name, f"{len(X)} x {X.shape[1]}", k, spread(base, 3)]
        squared = None
        for loss in LOSSES:
            scores = nmi_of(X, y, k, loss, plugin_defaults(loss)[1], seeds, normalize)
            squared = np.mean(scores) if loss == "squared" else squared
            diff = np.mean(scores) - squared
            row.append(f"{np.mean(scores):.3f}" + ("" if loss == "squared" else f" ({diff:+.3f})"))
        rows.append(row)
        log(f"real: {name} done")
    restarts = sorted({plugin_defaults(loss)[1] for loss in LOSSES})
    table(f"NMI on real features with the plugin's defaults (normalize={normalize}, n_init="
          f"{'/'.join(map(str, restarts))}, scikit-learn with the same), mean of 3 seeds; in "
          "brackets: the difference to squared", ["data", "n x d", "k", "scikit-learn KMeans"]
          + LOSSES, rows)


# ------------------------------------------------------------------ section 3
def choose_k_sets(quick, real):
    """[(name, X, true k, loss)]: labelled sets for choosing k."""
    from sklearn.datasets import load_iris, load_wine, make_blobs
    from sklearn.preprocessing import StandardScaler

    out = []
    seeds = range(2 if quick else 5)
    for seed in seeds:  # clusters overlap: k-means at the true k has ARI 0.74-0.99
        X, _ = make_blobs(n_samples=1000, centers=4, n_features=4, cluster_std=2.5,
                          random_state=seed)
        out.append((f"overlapping blobs k=4 (seed {seed})", X, 4, "squared"))
    for seed in seeds:  # k-means at the true k has ARI 0.98-1.00
        X, _ = separated_blobs([400, 300, 200, 150, 100, 80, 60, 40], random_state=seed)
        out.append((f"unequal blobs k=8 (seed {seed})", X, 8, "squared"))
    for seed in seeds:
        X, _, inliers, _ = contaminated_blobs(k=5, contamination="far", fraction=0.1,
                                              random_state=seed)
        out.append((f"blobs k=5, 10% far outliers (seed {seed})", X, 5, "correntropy"))
    out.append(("iris (standardized)", StandardScaler().fit_transform(load_iris().data), 3,
                "squared"))
    out.append(("wine (standardized)", StandardScaler().fit_transform(load_wine().data), 3,
                "squared"))
    for name in ("digits (pixels)", "demo: 5 classes", "demo: textures", "demo + hymenoptera: 7 groups"):
        X, _, k = real[name]
        out.append((name, X, k, "squared"))
    return out


def silhouette_argmax(X, ks, seed):
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    scores = [silhouette_score(X, KMeans(k, n_init=3, random_state=seed).fit_predict(X))
              for k in ks]
    return ks[int(np.argmax(scores))]


def choose_k_section(quick, real):
    import clustering

    k_min, k_max = 2, 12
    rows = []
    hits = {"ours": 0, "silhouette": 0}
    for name, X, true_k, loss in choose_k_sets(quick, real):
        X = np.asarray(X, dtype=np.float32)
        start = time.perf_counter()
        r = clustering.choose_k(None, embeddings=X, loss=loss, k_min=k_min, k_max=k_max,
                                progress=False)
        seconds = time.perf_counter() - start
        base = silhouette_argmax(X, list(range(k_min, k_max + 1)), 51)
        hits["ours"] += r["recommended_k"] == true_k
        hits["silhouette"] += base == true_k
        picks = ", ".join(f"{c} {v}" for c, v in r["best"].items() if v is not None)
        rows.append([name, loss, true_k, r["recommended_k"], base, picks, f"{seconds:.1f} s"])
        log(f"choose_k: {name} done")
    rows.append(["**hits**", "", "", f"**{hits['ours']} / {len(rows)}**",
                 f"**{hits['silhouette']} / {len(rows)}**", "", ""])
    table(f"choose_k (k = {k_min}..{k_max}) against the silhouette argmax of scikit-learn "
          "KMeans (n_init=3)",
          ["data", "loss", "true k", "recommended", "silhouette argmax", "each criterion's k",
           "time"], rows)


#: features choose_k is run on for the photo collections (bench/photos.py)
PHOTO_CHOOSE_K_FEATURES = ("raw", "UMAP5")


def photo_choose_k_section(photo_sets, k_min=2, k_max=12):
    """choose_k against the number of classes at each label level, on the
    photo collections' EfficientNet-Lite0 features (raw and reduced; the time
    is the sweep's, on features already reduced) whose classes fit the range."""
    import clustering

    rows, hits = [], {}
    for name, (X, levels) in photo_sets.items():
        levels = {lvl: truth for lvl, truth in levels.items() if k_min <= len(set(truth)) <= k_max}
        if not levels:
            log(f"choose_k: {name} skipped: its numbers of classes are outside {k_min}..{k_max}")
            continue
        for features in PHOTO_CHOOSE_K_FEATURES:
            F = photos.PREPROCESSING[features](X, 0)
            start = time.perf_counter()
            r = clustering.choose_k(None, embeddings=F, k_min=k_min, k_max=k_max, progress=False)
            seconds = time.perf_counter() - start
            base = silhouette_argmax(F, list(range(k_min, k_max + 1)), 51)
            picks = ", ".join(f"{c} {v}" for c, v in r["best"].items() if v is not None)
            for level, truth in levels.items():  # one sweep, scored against each level
                true_k = len(set(truth))
                h = hits.setdefault(features, [0, 0, 0])
                h[0] += r["recommended_k"] == true_k
                h[1] += base == true_k
                h[2] += 1
                rows.append([name, level, features, true_k, r["recommended_k"], base, picks,
                             f"{seconds:.1f} s"])
            log(f"choose_k: {name} ({features}) done")
    for features, (ours, sil, n) in hits.items():
        rows.append([f"**hits ({features})**", "", "", "", f"**{ours} / {n}**", f"**{sil} / {n}**", "", ""])
    table(f"choose_k (k = {k_min}..{k_max}) on photo collections (EfficientNet-Lite0) against the "
          "number of classes at each label level and the silhouette argmax",
          ["data", "level", "features", "classes", "recommended", "silhouette argmax",
           "each criterion's k", "time"], rows)


# ------------------------------------------------------------------ section 4
def defaults_section(quick, real):
    names = [n for n in real if n in ("demo: 5 classes", "hymenoptera", "demo + hymenoptera: 7 groups")
             or n.startswith("Fashion-MNIST")]
    n_inits = (1, 3) if quick else (1, 3, 10)
    settings = [(normalize, n_init) for normalize in (False, True) for n_init in n_inits]
    rows, means = [], {}
    for loss in ("squared", "correntropy", "huber"):
        for name in names:
            X, y, k = real[name]
            scores = [np.mean(nmi_of(X, y, k, loss, n_init, range(3), normalize))
                      for normalize, n_init in settings]
            means.setdefault(loss, []).append(scores)
            rows.append([name, loss] + [f"{v:.3f}" for v in scores])
            log(f"defaults: {name}, {loss} done")
        rows.append([f"**mean of {len(names)} sets**", loss]
                    + [f"**{v:.3f}**" for v in np.mean(means[loss], axis=0)])
    header = ["data", "loss"] + [f"{'normalized' if norm else 'raw'}, n_init={n}"
                                 for norm, n in settings]
    table("Defaults: NMI by normalize and n_init (EfficientNet-Lite0 features, mean of 3 seeds)",
          header, rows)


# ------------------------------------------------------------------ section 5
def load_photo_sets(directory, heldout, models):
    """{model: {name: (X, {level: labels})}} of the photo collections (the
    held-out ones with ``heldout``); None, with a message, when there are none."""
    root = photos.photos_dir(directory)
    records = photos.collections(root, heldout)
    if not records:
        print(f"\n(photos skipped: no {'held-out ' if heldout else ''}collections in {os.path.abspath(root)}; "
              "build them with bench/fetch_photos.py)")
        return None
    out = {}
    for model in models:
        out[model] = {}
        for name, record in records.items():
            out[model][name] = photos.embeddings(root, name, record, model)
            log(f"photos: {name} embedded with {model}")
    return out


def _mean(runs, column):
    return float(np.mean([r[column] for r in runs]))


def photos_section(quick, photo_sets, heldout):
    seeds = range(2 if quick else 5)
    results = {}  # (model, name, level) -> {candidate: runs}
    for model, sets in photo_sets.items():
        for name, (X, levels) in sets.items():
            log(f"photos: {name}, {model} ({len(X)} x {X.shape[1]})")
            per = photos.evaluate(X, levels, seeds, log=log)
            for level in levels:
                results[(model, name, level)] = {c: per[c][level] for c in per}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"photos{'-heldout' if heldout else ''}.json"), "w") as f:
        json.dump([[list(key), runs] for key, runs in results.items()], f)
    columns = list(dict.fromkeys((name, level) for _, name, level in results))
    header = ["candidate"] + [f"{n}: {lvl} (k={len(set(photo_sets[next(iter(photo_sets))][n][1][lvl]))})"
                              for n, lvl in columns]
    for model in photo_sets:
        for metric, column in (("NMI", 0), ("ARI", 1)):
            rows = []
            for c in photos.CANDIDATES:
                runs = [results[(model, n, lvl)][c] for n, lvl in columns]
                rows.append([c] + [spread([r[column] for r in run], 3) for run in runs]
                            + [f"{np.mean([_mean(run, column) for run in runs]):.3f}"])
            table(f"Photos, {model}: {metric}, mean (min-max) over {len(seeds)} seeds", header + ["mean"], rows)
        rows = []
        for c in photos.CANDIDATES:
            rows.append([c] + [f"{_mean(results[(model, n, lvl)][c], 2):.2f}"
                               for n, lvl in columns if lvl == "class"])
        table(f"Photos, {model}: seconds per run (preprocessing + fit at the class level, 2 cores)",
              ["candidate"] + [n for n, lvl in columns if lvl == "class"], rows)
        rows = [[n, lvl, f"{_mean(results[(model, n, lvl)]['UMAP5+HDBSCAN'], 3):.2f}",
                 f"{_mean(results[(model, n, lvl)]['UMAP5+HDBSCAN'], 4):.0f}", len(set(photo_sets[model][n][1][lvl]))]
                for n, lvl in columns]
        table(f"Photos, {model}: UMAP5+HDBSCAN noise (its own label in NMI/ARI) and clusters found",
              ["data", "level", "noise fraction", "clusters", "classes"], rows)
    photos_summary(results, list(photo_sets))


def photos_summary(results, models):
    """Per candidate: mean NMI per model, its worst margin to the best
    scikit-learn baseline and to today's defaults, and time against the defaults."""
    keys = list(results)
    rows = []
    for c in photos.CANDIDATES:
        nmi = {key: _mean(results[key][c], 0) for key in keys}
        vs_base = [nmi[key] - max(_mean(results[key][b], 0) for b in photos.BASELINES) for key in keys]
        vs_default = [nmi[key] - _mean(results[key]["defaults (raw)"], 0) for key in keys]
        timed = [key for key in keys if key[2] == "class"]
        ratio = np.mean([_mean(results[key][c], 2) / _mean(results[key]["defaults (raw)"], 2) for key in timed])
        worst = keys[int(np.argmin(vs_base))]
        rows.append([c] + [f"{np.mean([nmi[k] for k in keys if k[0] == m]):.3f}" for m in models]
                    + [f"**{np.mean(list(nmi.values())):.3f}**", f"{min(vs_base):+.3f} ({worst[1]}, {worst[0].split('-')[-1]})",
                       f"{min(vs_default):+.3f}", f"{sum(v >= -0.01 for v in vs_base)} / {len(keys)}",
                       f"{ratio:.2f}x"])
    table("Photos: mean NMI over collections and levels per model; worst margin to the best of "
          "scikit-learn KMeans on raw / L2 / L2+PCA64 and to today's defaults (over every model, "
          "collection and level); time against the defaults",
          ["candidate"] + models + ["mean", "worst vs best sklearn", "worst vs defaults",
                                    "within 0.01 of best sklearn", "time / defaults"], rows)


SECTIONS = ("blobs", "real", "choose_k", "defaults", "photos")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds and smaller sets")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--photos-dir", help="the photo collections (default: $IMGCLUST_PHOTOS_DIR, "
                        "else <repo>/../shared/data/photos)")
    parser.add_argument("--heldout", action="store_true",
                        help="only the photo parts of photos and choose_k, on the held-out collections")
    parser.add_argument("--models", default=",".join(photos.MODELS),
                        help="embedding models of the photos section (lite0 only with --quick)")
    args = parser.parse_args()
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if args.heldout:  # only the photo collections' parts
        sections = [s for s in sections if s in ("photos", "choose_k")]
    start = time.perf_counter()
    if "blobs" in sections:
        blobs_section(args.quick)
    real = real_sets(args.quick) if set(sections) & {"real", "defaults"} or (
        "choose_k" in sections and not args.heldout) else {}
    if "real" in sections:
        real_section(args.quick, real)
    photo_sets = None
    if set(sections) & {"photos", "choose_k"}:
        models = [photos.MODELS[0]] if args.quick else args.models.split(",")
        photo_sets = load_photo_sets(args.photos_dir, args.heldout, models)
    if "choose_k" in sections:
        if real:
            choose_k_section(args.quick, real)
        if photo_sets and photos.MODELS[0] in photo_sets:
            photo_choose_k_section(photo_sets[photos.MODELS[0]])
    if "defaults" in sections:
        defaults_section(args.quick, real)
    if "photos" in sections and photo_sets:
        photos_section(args.quick, photo_sets, args.heldout)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
