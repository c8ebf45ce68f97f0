"""Benchmark: what the Clusters panel does when it opens a large run.

A synthetic dataset of ``--samples`` samples (default 100,000) in a throwaway
MongoDB, each with a ``ground_truth`` class and (default) a 512-d float32
``embedding`` in its document, as real datasets have; a ``--clusters``-cluster
run (default 100) computed with ``clustering.compute_clusters`` on random
vectors around ``--clusters`` centers. Then, each the best of ``--repeats``
calls after a first (cold) one, all in the same process:

- **ours**: ``clustering.runs.browse.run_overview`` (one aggregation over the run's
  fields), without and with a ground-truth field;
- **the panel's on_load** through FiftyOne's operator machinery
  (``execute_or_delegate_operator``, as the App calls it: the overview, the
  input choices, the render);
- **naive baseline**: every sample's values into Python, grouped per cluster
  (plus ``clustering.evaluate_run``, which reads the ground truth per sample);
- **reference**: ``clustering.run_summary``, from the run's stored arrays
  (no ground truth).

The dataset's in-memory caches (loaded run results) are cleared before every
call, as in a new App process.

Prints a markdown table, the machine's cores and its load average before and
after. Target: the panel opens a 100,000-sample, 100-cluster run in under 2 s.
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

RUN_KEY = "bench"
PANEL_URI = "@imgclust/clustering/clusters_panel"
TARGET_S = 2.0


def load_avg():
    try:
        return "%.1f/%.1f/%.1f" % os.getloadavg()
    except OSError:
        return "n/a"


def timed(fn, repeats):
    """(first call's seconds, best of the next ``repeats`` calls, last result)."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return first, best, result


def make_dataset(n, k, dim, seed):
    import numpy as np

    import fiftyone as fo

    import clustering

    rng = np.random.default_rng(seed)
    blob = rng.integers(0, k, size=n)
    dataset = fo.Dataset()
    dataset.add_sample_field("ground_truth", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    t0 = time.perf_counter()
    dataset.add_samples(
        [
            fo.Sample(filepath=f"/data/images/{i:07d}.jpg", ground_truth=fo.Classification(label=f"class_{b % 10}"))
            for i, b in enumerate(blob)
        ],
        progress=False,
        validate=False,
        expand_schema=False,
    )
    if dim:
        dataset.set_values("embedding", list(rng.normal(size=(n, dim)).astype(np.float32)), progress=False)
    t_data = time.perf_counter() - t0
    X = (rng.normal(scale=4.0, size=(k, 32))[blob] + rng.normal(size=(n, 32))).astype(np.float32)
    t0 = time.perf_counter()
    clustering.compute_clusters(dataset, RUN_KEY, embeddings=X, k=k, n_init=1, max_iter=10, progress=False)
    return dataset, t_data, time.perf_counter() - t0


def naive_overview(dataset, gt_field=None, num_thumbnails=4):
    """Every sample's values into Python, grouped per cluster."""
    import clustering

    ids, paths, labels, losses, ranks = dataset.values(
        ["id", "filepath", f"{RUN_KEY}_cluster", f"{RUN_KEY}_loss", f"{RUN_KEY}_rep"]
    )
    groups = defaultdict(list)
    reps = defaultdict(list)
    for i, path, c, loss, rank in zip(ids, paths, labels, losses, ranks):
        if c is None:
            continue
        groups[c].append(loss)
        if rank and rank <= num_thumbnails:
            reps[c].append((rank, i, path))
    rows = {
        c: {"size": len(v), "compactness": sum(v) / len(v), "thumbnails": sorted(reps[c])}
        for c, v in groups.items()
    }
    evaluation = clustering.evaluate_run(dataset, RUN_KEY, gt_field=gt_field) if gt_field else None
    return rows, evaluation


def panel_event(dataset, method, state=None):
    """The panel's ``method`` event through FiftyOne's operator machinery."""
    from fiftyone.operators.executor import _parse_ctx, execute_or_delegate_operator

    params = {"__method__": method, "panel_id": "bench", "panel_state": state or {}}
    result = asyncio.run(execute_or_delegate_operator(PANEL_URI, _parse_ctx(dataset=dataset, params=params)))
    result.raise_exceptions()
    return result


def overview_cache():
    """The panel's overview cache, in the plugin module FiftyOne loaded."""
    import fiftyone.operators as foo

    return sys.modules[type(foo.get_operator(PANEL_URI)).__module__].OVERVIEWS


def panel_on_load(dataset):
    overview_cache().clear()  # as a new App process would
    return panel_event(dataset, "on_load")


def bench(args):
    import fiftyone.operators as foo

    from clustering.runs import browse
    import clustering

    print(
        f"{args.samples:,} samples, {args.clusters} clusters, {args.embedding_dim}-d embeddings in each document; "
        f"{os.cpu_count()} CPU cores; load average {load_avg()}",
        flush=True,
    )
    dataset, t_data, t_run = make_dataset(args.samples, args.clusters, args.embedding_dim, args.seed)
    print(f"setup: dataset {t_data:.1f} s, run {t_run:.1f} s; load average {load_avg()}", flush=True)
    assert foo.get_operator(PANEL_URI) is not None

    rows = []

    def measure(what, fn):
        def cold():  # as a new App process would: no run results cached in memory
            dataset.clear_cache()
            return fn()

        first, best, result = timed(cold, args.repeats)
        rows.append((what, first, best))
        print(f"  {what}: first {first:.3f} s, best {best:.3f} s", flush=True)
        return result

    ours = measure("ours: browse.run_overview", lambda: browse.run_overview(dataset, RUN_KEY))
    ours_gt = measure("ours: browse.run_overview + ground truth", lambda: browse.run_overview(dataset, RUN_KEY, gt_field="ground_truth"))
    measure("ours: the panel's on_load (operator machinery)", lambda: panel_on_load(dataset))
    naive, _ = measure("naive: per-sample values, grouped in Python", lambda: naive_overview(dataset))
    _, naive_ev = measure("naive: per-sample values + evaluate_run", lambda: naive_overview(dataset, "ground_truth"))
    measure("reference: clustering.run_summary (stored arrays)", lambda: clustering.run_summary(dataset, RUN_KEY))

    # paging and sorting: the overview computed on open is used again
    overviews = overview_cache()
    shown = {"run_key": RUN_KEY, "run_keys": [RUN_KEY], "page": 0, "sort": "cluster", "gt_field": "none", "tab": "clusters"}
    panel_event(dataset, "on_load")
    paging = []
    for what, before in (("the panel's next page, overview cached", lambda: None), ("the panel's next page, overview recomputed", overviews.clear)):
        def page():
            before()
            return panel_event(dataset, "next_page", shown)

        first, best, _ = timed(page, args.repeats)
        paging.append((what, first, best))
        print(f"  {what}: first {first:.3f} s, best {best:.3f} s", flush=True)

    # the same numbers, both ways
    assert {r["cluster"]: r["size"] for r in ours["clusters"]} == {c: r["size"] for c, r in naive.items()}
    assert all(abs(r["compactness"] - naive[r["cluster"]]["compactness"]) <= 1e-9 * abs(r["compactness"]) for r in ours["clusters"])
    assert abs(ours_gt["evaluation"]["nmi"] - naive_ev["nmi"]) < 1e-12

    baseline = {False: rows[3][2], True: rows[4][2]}
    print(f"\nload average after: {load_avg()}\n")
    print("| what | first call (s) | best of %d (s) | vs naive |" % args.repeats)
    print("|---|---|---|---|")
    for what, first, best in rows:
        ref = baseline["ground truth" in what or "evaluate_run" in what]
        print(f"| {what} | {first:.3f} | {best:.3f} | {ref / best:.1f}x |")
    print("\n| paging | first call (s) | best of %d (s) | vs recomputed |" % args.repeats)
    print("|---|---|---|---|")
    for what, first, best in paging:
        print(f"| {what} | {first:.3f} | {best:.3f} | {paging[1][2] / best:.1f}x |")
    opened = rows[2][2]
    verdict = "meets" if opened < TARGET_S else "misses"
    print(f"\nThe panel opens the run in {opened:.3f} s (best), {rows[2][1]:.3f} s (first): {verdict} the {TARGET_S:.0f} s target.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--embedding-dim", type=int, default=512, help="a vector of this size in each document (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # a throwaway database and plugins directory (the plugin is this checkout)
    work = tempfile.mkdtemp(prefix="imgclust-bench-panel-")
    os.environ["FIFTYONE_DATABASE_DIR"] = os.path.join(work, "db")
    os.environ.pop("FIFTYONE_DATABASE_URI", None)
    os.environ["FIFTYONE_PLUGINS_DIR"] = os.path.join(work, "plugins")
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    os.makedirs(os.path.join(work, "plugins", "imgclust"))
    os.symlink(REPO_ROOT, os.path.join(work, "plugins", "imgclust", "clustering"))
    try:
        bench(args)
    finally:
        import fiftyone.core.odm.database as food

        food._disconnect()
        if food._db_service is not None:  # stop mongod before its files go
            food._db_service.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
