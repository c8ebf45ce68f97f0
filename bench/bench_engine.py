"""Benchmark of the clustering engine (GeneralizedKMeans).

    .venv/bin/python bench/bench_engine.py [--quick] [--device cpu|cuda] [--repeats N]

Prints markdown tables whose ratios are all measured in the same run:

1. vs the seeds' reference (bench/reference.py; CPU only): every loss it
   supports, same loss and loss_param; ours with default settings (k-means++,
   tol=1e-4) and ours "matched" (the reference's random initial centers and its
   3 iterations). The reference objective is that of its final centers with
   every sample assigned to its nearest center.
2. squared vs scikit-learn KMeans (lloyd, n_init=1, tol=0, same initial centers,
   same iteration count).
3. every loss vs our own squared loss on the same data, initial centers and
   iteration count.

``--device cuda`` runs a GPU-size preset instead (n=1,000,000, d=768,
k=1,000, 20 iterations; data generated on the device, synchronized timings)
against its targets: squared < 0.5 s, radial losses < 1 s, coordinate-wise < 5 s.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from clustering import GeneralizedKMeans, get_loss  # noqa: E402

LOSSES = ["squared", "absolute", "huber", "pseudo_huber", "correntropy", "epsilon_insensitive",
          "geometric_median", "cosine"]
RADIAL = {"squared", "correntropy", "epsilon_insensitive", "geometric_median", "cosine"}
GPU_TARGET_S = {loss: 0.5 if loss == "squared" else 1.0 if loss in RADIAL else 5.0
                for loss in LOSSES}


def blobs(n, d, k, seed=0, device="cpu"):
    """Gaussian mixture: k centers with N(0, 1) coordinates, unit-variance noise."""
    g = torch.Generator(device=device).manual_seed(seed)
    centers = torch.randn(k, d, generator=g, device=device)
    labels = torch.randint(0, k, (n,), generator=g, device=device)
    return centers[labels] + torch.randn(n, d, generator=g, device=device)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats, device="cpu"):
    """(best wall time over ``repeats`` runs, result of the last run)."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def warm_up(device="cpu"):
    """Compile / load every kernel once so that no timing includes it."""
    X = blobs(300, 8, 3, seed=9, device=device)
    for dtype in ("float32", "float64"):
        for loss in LOSSES:
            GeneralizedKMeans(3, loss=loss, dtype=dtype, max_iter=3, device=device).fit(X)


def default_param(X, k, loss, init):
    """The engine's data-driven loss_param for this data (None for parameter-free losses)."""
    if get_loss(loss).param_name is None:
        return None
    return GeneralizedKMeans(k, loss=loss, init=init, max_iter=0).fit(X).loss_param_


def objective(loss, X, centers, param):
    """Float64 objective of ``centers`` with every sample on its nearest center."""
    D = get_loss(loss).pairwise(torch.from_numpy(X), torch.from_numpy(
        np.asarray(centers, dtype=np.float64)), param)
    return float(D.min(1).values.sum())


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


def fmt_time(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


# ------------------------------------------------------------------ section 1
def vs_reference(quick, repeats):
    from bench.reference import PARAM_KEYS, SEED_NAMES, generalized_clustering

    if quick:
        sizes = {"bfgs": [(300, 32, 3)], "closed": [(4000, 64, 30)]}
    else:
        sizes = {"bfgs": [(300, 64, 3), (300, 128, 3)], "closed": [(20000, 64, 50)]}
    rows = []
    for loss in SEED_NAMES:
        kind = "closed" if loss in ("squared", "absolute") else "bfgs"
        for n, d, k in sizes[kind]:
            X = blobs(n, d, k, seed=1).double().numpy()
            param = default_param(X, k, loss, X[:k])
            params = {PARAM_KEYS[loss]: param} if loss in PARAM_KEYS else {}
            np.random.seed(0)
            init = X[np.random.choice(n, k, replace=False)]
            np.random.seed(0)
            start = time.perf_counter()
            ref_centers, _ = generalized_clustering(X, k, SEED_NAMES[loss], params)
            ref_time = time.perf_counter() - start
            ref_obj = objective(loss, X, ref_centers, param)
            runs = {
                "default": lambda: GeneralizedKMeans(k, loss=loss, loss_param=param,
                                                     random_state=0).fit(X),
                "matched": lambda: GeneralizedKMeans(k, loss=loss, loss_param=param, init=init,
                                                     max_iter=3).fit(X),
            }
            for mode, run in runs.items():
                ours_time, km = timed(run, repeats)
                ours_obj = objective(loss, X, km.cluster_centers_, param)
                rows.append([loss, mode, n, d, k, f"{km.n_iter_} (ref 3)",
                             fmt_time(ours_time), fmt_time(ref_time),
                             f"{ref_time / ours_time:,.0f}x", f"{ours_obj / ref_obj:.4f}"])
                print(f"  [ref] {loss} {mode} done", file=sys.stderr, flush=True)
    table("vs the seeds' reference (CPU)",
          ["loss", "ours", "n", "d", "k", "iterations", "time", "reference time",
           "speed-up", "objective / reference"], rows)


# ------------------------------------------------------------------ section 2+3
def vs_sklearn_and_squared(quick, repeats, iterations=20):
    from sklearn.cluster import KMeans

    n, d, k = (20000, 256, 50) if quick else (100000, 512, 100)
    X = blobs(n, d, k, seed=2).numpy()
    init = X[np.random.default_rng(0).choice(n, k, replace=False)]
    sk_time, sk = timed(lambda: KMeans(k, init=init, n_init=1, max_iter=iterations, tol=0.0,
                                       algorithm="lloyd").fit(X), repeats)
    iters = int(sk.n_iter_)
    rows = []
    for prune in (False, True):
        ours_time, ours = timed(lambda: GeneralizedKMeans(k, init=init, max_iter=iters, tol=0.0,
                                                          prune=prune).fit(X), repeats)
        rows.append(["ours" + (" (prune=True)" if prune else " (default)"), n, d, k,
                     f"{ours.n_iter_} / {iters}", fmt_time(ours_time), fmt_time(sk_time),
                     f"{sk_time / ours_time:.2f}x", f"{ours.objective_ / sk.inertia_:.5f}"])
    table("squared vs scikit-learn KMeans (CPU, same init, lloyd, tol=0)",
          ["run", "n", "d", "k", "iterations (ours / sklearn)", "ours", "sklearn", "speed-up",
           "inertia / sklearn"], rows)

    rows = []
    for loss in LOSSES + ["squared (prune=True)"]:
        name, prune = loss.split(" ")[0], "auto" if " " not in loss else True
        param = default_param(X, k, name, init)
        t, km = timed(lambda: GeneralizedKMeans(k, loss=name, loss_param=param, init=init,
                                                max_iter=iterations, tol=0.0, prune=prune)
                      .fit(X), repeats)
        if loss == "squared":
            base = t
        rows.append([loss, n, d, k, km.n_iter_, fmt_time(t), fmt_time(t / km.n_iter_),
                     f"{t / base:.2f}x"])
        print(f"  [losses] {loss} done", file=sys.stderr, flush=True)
    table("every loss vs our squared (CPU, same data / init, tol=0)",
          ["loss", "n", "d", "k", "iterations", "time", "per iteration", "time / squared"],
          rows)


# ------------------------------------------------------------------ GPU preset
def gpu_preset(device, repeats, quick, iterations=20):
    n, d, k = (200_000, 768, 1_000) if quick else (1_000_000, 768, 1_000)
    X = blobs(n, d, k, seed=3, device=device)
    init = X[torch.randperm(n, generator=torch.Generator(device=device).manual_seed(0),
                            device=device)[:k]].clone()
    rows = []
    for loss in LOSSES:
        param = default_param(X, k, loss, init)
        t, km = timed(lambda: GeneralizedKMeans(k, loss=loss, loss_param=param, init=init,
                                                max_iter=iterations, tol=0.0,
                                                device=device).fit(X), repeats, device)
        target = GPU_TARGET_S[loss]
        rows.append([loss, n, d, k, km.n_iter_, fmt_time(t), f"< {target} s",
                     "yes" if t < target else "no"])
        print(f"  [gpu] {loss} done", file=sys.stderr, flush=True)
    table(f"GPU preset on {torch.cuda.get_device_name(device)}",
          ["loss", "n", "d", "k", "iterations", "time", "target", "met"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in < 2 min")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU preset")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (best is kept)")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    warm_up(args.device)
    if torch.device(args.device).type == "cuda":
        gpu_preset(args.device, repeats, args.quick)
        return
    vs_reference(args.quick, repeats)
    vs_sklearn_and_squared(args.quick, repeats)


if __name__ == "__main__":
    main()
