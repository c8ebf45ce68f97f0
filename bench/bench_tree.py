"""Benchmark of cluster trees (``clustering.runs.tree``): what a second level costs
and whether it recovers a known two-level structure.

    .venv/bin/python bench/bench_tree.py [--n 100000] [--dim 512] [--top 5] [--sub 4]

On its own MongoDB: ``--n`` samples of ``--dim``-d float32 embeddings in
``--top`` groups of ``--sub`` sub-groups each (groups far apart, sub-groups
apart within a group), stored in a vector field. After an untimed warm-up
on 2,000 samples (UMAP's and the kernels' compilation, once per process),
measured ``--repeats`` times, interleaved, on the same dataset through
``compute_clusters`` with the plugin's defaults (``--reduction`` to change
the features' reduction):

- the flat run at the top level (k = ``--top``);
- the two-level tree in one call (``levels=[top, sub]``), which stores the
  top run and the level below it (``<key>_l2``).

Prints the best seconds of each, the tree's cost as a multiple of the flat
run (target: at most 2x) and the NMI of each level against the truth
(target: at least 0.95 at both).
"""

import argparse
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from common import own_database, table  # noqa: E402  (bench/common.py)


def build(fo, n, dim, top, sub, seed=0):
    rng = np.random.default_rng(seed)
    tops = rng.normal(scale=1.0, size=(top, dim)) * 12.0
    subs = tops[:, None, :] + rng.normal(size=(top, sub, dim)) * 3.0
    g, s = np.arange(n) % top, (np.arange(n) // top) % sub
    X = (subs[g, s] + rng.normal(size=(n, dim))).astype(np.float32)
    dataset = fo.Dataset("bench-tree")
    dataset.add_samples(
        [fo.Sample(filepath=f"/none/{i}.jpg", emb=X[i]) for i in range(n)], progress=False
    )
    ids = dataset.values("id")
    return dataset, dict(zip(ids, g)), dict(zip(ids, g * sub + s))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--sub", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--reduction", default="auto", help="compute_clusters' reduction (default: the plugin's)")
    args = parser.parse_args()

    with own_database("imgclust-bench-tree-"):
        import fiftyone as fo

        import clustering
        from clustering.engine import metrics as cm

        print(f"building {args.n:,} x {args.dim} in {args.top} x {args.sub} groups ...", flush=True)
        dataset, groups, subgroups = build(fo, args.n, args.dim, args.top, args.sub)
        warm = dataset.limit(2000)
        clustering.compute_clusters(  # UMAP fitted on half, the rest transformed: compiles both
            warm, "warm", embeddings="emb", levels=[args.top, args.sub], umap_fit_size=1000, progress=False
        )
        clustering.delete_run(dataset, "warm")
        print(f"load average before: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        flat, tree = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            clustering.compute_clusters(
                dataset, "flat", embeddings="emb", k=args.top, reduction=args.reduction, progress=False, overwrite=True
            )
            flat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            top = clustering.compute_clusters(
                dataset, "tree", embeddings="emb", levels=[args.top, args.sub], reduction=args.reduction,
                progress=False, overwrite=True,
            )
            tree.append(time.perf_counter() - t0)
            print(f"  flat {flat[-1]:.1f} s, tree {tree[-1]:.1f} s", flush=True)
        print(f"load average after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        flat, tree = min(flat), min(tree)
        level = clustering.load_clustering_results(dataset, "tree_l2")
        nmi_top = cm.nmi([groups[i] for i in top.sample_ids], top.labels)
        nmi_sub = cm.nmi([subgroups[i] for i in level.sample_ids], level.labels)
        table(
            f"A two-level tree vs the flat run, {args.n:,} x {args.dim}, {args.top} groups of {args.sub}, "
            f"reduction={args.reduction!r}, best of {args.repeats}",
            ["what", "seconds", "vs the flat run", "NMI"],
            [
                [f"flat run (k={args.top})", f"{flat:.1f}", "1.00x", f"{nmi_top:.3f} (top level)"],
                [f"tree, levels=[{args.top}, {args.sub}]", f"{tree:.1f}", f"{tree / flat:.2f}x", f"{nmi_sub:.3f} (level 2)"],
            ],
        )
        print(f"\ntarget: tree at most 2x the flat run ({'met' if tree <= 2 * flat else 'MISSED'}); "
              f"NMI at least 0.95 at both levels ({'met' if min(nmi_top, nmi_sub) >= 0.95 else 'MISSED'})")


if __name__ == "__main__":
    main()
