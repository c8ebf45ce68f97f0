"""Benchmark of compute_clusters at scale: reading embeddings, clustering and
writing a run's fields, through FiftyOne's operator machinery.

    .venv/bin/python bench/bench_scale.py [--n 1000000] [--dim 512] [--k 100] [--keep]

Builds a synthetic dataset of ``--n`` samples with a ``--dim``-d VectorField
(Gaussian blobs, ``spread 0.3``: overlapping clusters, so 20 Lloyd iterations
do not converge; stored exactly as FiftyOne stores vectors, inserted as raw
documents) in a private MongoDB (a throwaway directory, or with ``--keep``
``bench/results/scale-db``, reused by the next ``--keep`` run), then measures,
each in a fresh subprocess (so that each peak RSS is its own):

1. I/O against FiftyOne on the first ``--baseline-n`` samples: ``values()``
   vs our reader, three ``set_values`` calls vs our one-pass writer (same
   values, new fields);
2. the ``compute_clusters`` operator on every sample (squared loss, k, 20
   iterations, n_init=1): total time, each stage (reading, clustering,
   writing, saving the results), peak RSS and its growth over the process
   before the run, as a multiple of the float32 feature matrix;
3. the same run fitted on a uniform sample (``--fit-sample-size``, default
   n/10) and every sample assigned in streamed chunks: its objective next to
   the full fit's;
4. the engine alone on ``--seeding-n`` samples of the same distribution:
   k-means++ seeded on every sample vs on its uniform sample (what
   ``GeneralizedKMeans`` does above 100,000 samples), time and objective
   after the same 20 iterations.

The targets of issue 16 (2 cores, 1,000,000 x 512, k=100): <= 120 s end to
end, reading + writing <= clustering, peak RSS <= 5 GB.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from common import start_mongod  # noqa: E402  (bench/common.py)
KEEP_DIR = os.path.join(REPO_ROOT, "bench", "results", "scale-db")
FIELD = "emb"
OPERATOR = "@imgclust/clustering/compute_clusters"


# ---------------------------------------------------------------------------
# machine, processes


def load():
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine():
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) / 2**20
    return f"{model}, {os.cpu_count()} CPUs, {total:.0f} GiB"


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------
# dataset


def dataset_name(n, dim):
    return f"bench-scale-{n}x{dim}"


def _insert_part(uri, collection, dataset_id, start, stop, dim, k, seed):
    """Inserts samples start:stop as raw FiftyOne documents (a worker process)."""
    from datetime import datetime

    import pymongo
    from bson import ObjectId

    client = pymongo.MongoClient(uri)
    coll = client["fiftyone"][collection]
    header = _npy_header(dim)
    centers = 0.3 * np.random.default_rng(seed).normal(size=(k, dim)).astype(np.float32)
    rng = np.random.default_rng([seed, start])
    now = datetime.utcnow()
    for s in range(start, stop, 10_000):
        m = min(10_000, stop - s)
        X = centers[rng.integers(0, k, m)] + rng.normal(size=(m, dim)).astype(np.float32)
        coll.insert_many(
            [
                {
                    "_id": ObjectId(), "filepath": f"/data/{s + i:08d}.jpg", "tags": [], "metadata": None,
                    "created_at": now, "last_modified_at": now, "_media_type": "image",
                    "_rand": float(rng.random()), "_dataset_id": dataset_id,
                    FIELD: zlib.compress(header + X[i].tobytes()),  # = fou.serialize_numpy_array(X[i])
                }
                for i in range(m)
            ],
            ordered=False,
        )
    client.close()


def _npy_header(dim):
    import io

    with io.BytesIO() as f:
        np.save(f, np.zeros(dim, dtype=np.float32))
        return f.getvalue()[: -4 * dim]


def build(uri, n, dim, k, seed=0):
    """The benchmark dataset, built if missing (two insert processes)."""
    import multiprocessing

    import fiftyone as fo
    import fiftyone.core.utils as fou

    name = dataset_name(n, dim)
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
        if len(dataset) == n:
            return dataset, 0.0
        fo.delete_dataset(name)
    t0 = time.perf_counter()
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_sample_field(FIELD, fo.VectorField)
    probe = np.arange(dim, dtype=np.float32)
    assert zlib.compress(_npy_header(dim) + probe.tobytes()) == fou.serialize_numpy_array(probe)
    workers = max(1, min(os.cpu_count() or 1, 4))
    bounds = np.linspace(0, n, workers + 1).astype(int)
    args = [(uri, dataset._sample_collection_name, dataset._doc.id, int(a), int(b), dim, k, seed)
            for a, b in zip(bounds[:-1], bounds[1:])]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.starmap(_insert_part, args)
    dataset.reload()
    assert len(dataset) == n
    return dataset, time.perf_counter() - t0


def settle(uri, n, dim):
    """Before a measurement: no run left from an earlier one, and every change
    checkpointed to disk (so that no checkpoint of earlier writes falls in it)."""
    import fiftyone as fo
    import pymongo

    dataset = fo.load_dataset(dataset_name(n, dim))
    for key in dataset.list_runs():
        dataset.delete_run(key)
    client = pymongo.MongoClient(uri)
    client.admin.command("fsync")
    client.close()


# ---------------------------------------------------------------------------
# measurements (each in its own process)


def measure_io(args):
    """values() / set_values x3 vs ours on the first baseline_n samples."""
    import fiftyone as fo

    from clustering.runs import storage

    dataset = fo.load_dataset(dataset_name(args.n, args.dim))
    view = dataset.limit(args.baseline_n)
    ids = view.values("id")
    out = {"baseline_n": len(ids)}

    best = {"values_s": np.inf, "read_s": np.inf}
    for _ in range(2):  # interleaved rounds: load bursts hit both alike
        t = time.perf_counter()
        reference = view.values(FIELD)
        best["values_s"] = min(best["values_s"], time.perf_counter() - t)
        del reference
        t = time.perf_counter()
        _, X, _ = storage.read_embeddings(view, FIELD)
        best["read_s"] = min(best["read_s"], time.perf_counter() - t)
    out.update(best)

    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.k, len(ids))
    losses = rng.random(len(ids))
    ranks = np.where(rng.random(len(ids)) < 0.005, 1, 0)
    fields = [f"{p}_{s}" for p in ("base", "ours") for s in ("cluster", "loss", "rep")]
    for name in fields:
        dataset.add_sample_field(name, fo.FloatField if name.endswith("loss") else fo.IntField)
    try:
        t = time.perf_counter()
        dataset.set_values("base_cluster", dict(zip(ids, labels.tolist())), key_field="id")
        dataset.set_values("base_loss", dict(zip(ids, losses.tolist())), key_field="id")
        dataset.set_values("base_rep", {ids[i]: int(ranks[i]) for i in np.flatnonzero(ranks)}, key_field="id")
        out["set_values_s"] = time.perf_counter() - t
        t = time.perf_counter()
        storage.write_columns(
            dataset, storage.id_array(ids),
            {"ours_cluster": labels, "ours_loss": losses, "ours_rep": np.ma.masked_equal(ranks, 0)},
        )
        out["write_s"] = time.perf_counter() - t
        base = dataset.limit(args.baseline_n).values(["base_cluster", "base_loss", "base_rep"])
        ours = dataset.limit(args.baseline_n).values(["ours_cluster", "ours_loss", "ours_rep"])
        out["same_values"] = base == ours
    finally:
        dataset.delete_sample_fields(fields)
    return out


def _run(args, run_key, **params):
    import fiftyone as fo
    import fiftyone.operators as foo

    dataset = fo.load_dataset(dataset_name(args.n, args.dim))
    operator = foo.get_operator(OPERATOR)
    before = rss_bytes()
    t = time.perf_counter()
    results = operator(
        dataset, run_key=run_key, embeddings=FIELD, k=args.k, loss="squared", n_init=1, max_iter=20,
        tol=0.0, random_state=0, **params,
    )
    wall = time.perf_counter() - t
    peak = peak_rss_bytes()
    config = results.config
    out = {
        "wall_s": wall,
        "timings": results.timings,
        "objective": results.objective,
        "n_iter": results.n_iter,
        "num_clustered": config.num_clustered,
        "num_fit": config.num_fit,
        "streamed": config.streamed,
        "fit_objective": getattr(config, "fit_objective", None),
        "rss_before": before,
        "peak_rss": peak,
        "matrix_bytes": args.n * args.dim * 4,
    }
    return out


def measure_run(args):
    return _run(args, "bench")


def measure_streamed(args):
    return _run(args, "bench_streamed", fit_sample_size=args.fit_sample_size or max(args.k, args.n // 10))


def measure_seeding(args):
    import clustering.engine.kmeans as km
    from clustering import GeneralizedKMeans

    n = args.seeding_n
    rng = np.random.default_rng(1)
    centers = 0.3 * rng.normal(size=(args.k, args.dim)).astype(np.float32)
    X = centers[rng.integers(0, args.k, n)] + rng.normal(size=(n, args.dim)).astype(np.float32)
    out = {"n": n}
    for name, seed_samples in (("full", n), ("sampled", km._SEED_SAMPLES)):
        km._SEED_SAMPLES = seed_samples
        t = time.perf_counter()
        model = GeneralizedKMeans(args.k, max_iter=20, tol=0.0, random_state=0).fit(X)
        out[name] = {"fit_s": time.perf_counter() - t, "objective": model.objective_,
                     "seed_rows": min(n, max(seed_samples, km._SEED_SAMPLES_PER_CLUSTER * args.k))}
    return out


MEASUREMENTS = {"io": measure_io, "run": measure_run, "streamed": measure_streamed, "seeding": measure_seeding}


def in_subprocess(name, argv, env):
    """Runs measurement ``name`` in a fresh interpreter; its JSON result."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--measure", name, *argv],
        env=env, capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"measurement {name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# report


def gb(x):
    return f"{x / 1e9:.2f} GB"


def report(args, built_s, io, run, streamed, seeding, loads):
    n, d = args.n, args.dim
    print(f"\nmachine: {machine()}; load average {loads[0]} (start) {loads[-1]} (end)")
    print(f"dataset: {n:,} x {d} float32 VectorField, k={args.k}, squared, 20 iterations, n_init=1"
          + (f" (built in {built_s:.0f} s)" if built_s else " (reused)"))

    b = io["baseline_n"]
    print(f"\nI/O on the first {b:,} samples, same run (best of 2 for reading):\n")
    print("| what | FiftyOne | ours | speed-up |\n|---|---|---|---|")
    print(f"| read {d}-d vectors | values(): {io['values_s']:.2f} s | {io['read_s']:.2f} s | "
          f"**{io['values_s'] / io['read_s']:.1f}x** |")
    print(f"| write cluster, loss, rep | 3 x set_values: {io['set_values_s']:.2f} s | {io['write_s']:.2f} s | "
          f"**{io['set_values_s'] / io['write_s']:.1f}x** |")
    print(f"\nsame stored values: {io['same_values']}")

    print(f"\ncompute_clusters operator on {n:,} samples:\n")
    print("| stage | full fit | fit on a sample, streamed assignment |\n|---|---|---|")
    rows = [("reading embeddings", "read_s"), ("clustering", "cluster_s"), ("writing fields", "write_s")]
    for label, key in rows:
        print(f"| {label} | {run['timings'].get(key, 0):.1f} s | {streamed['timings'].get(key, 0):.1f} s |")
    for r in (run, streamed):
        r["rest_s"] = r["wall_s"] - sum(r["timings"].get(k, 0) for _, k in rows)
    print(f"| saving the run, operator overhead | {run['rest_s']:.1f} s | {streamed['rest_s']:.1f} s |")
    print(f"| **total (operator call)** | **{run['wall_s']:.1f} s** | **{streamed['wall_s']:.1f} s** |")
    print(f"| samples fitted | {run['num_fit']:,} | {streamed['num_fit']:,} |")
    print(f"| iterations | {run['n_iter']} | {streamed['n_iter']} |")
    print(f"| objective (all samples) | {run['objective']:.6g} | {streamed['objective']:.6g} "
          f"({streamed['objective'] / run['objective']:.4f}x) |")
    for r in (run, streamed):
        r["growth"] = (r["peak_rss"] - r["rss_before"]) / r["matrix_bytes"]
    print(f"| peak RSS | {gb(run['peak_rss'])} | {gb(streamed['peak_rss'])} |")
    print(f"| RSS growth / float32 matrix ({gb(run['matrix_bytes'])}) | {run['growth']:.2f}x | "
          f"{streamed['growth']:.2f}x |")

    full, sampled = seeding["full"], seeding["sampled"]
    print(f"\nk-means++ seeding, engine alone on {seeding['n']:,} x {d} (same distribution), "
          "fit with 20 iterations:\n")
    print("| seeded on | fit time | objective |\n|---|---|---|")
    print(f"| every sample ({full['seed_rows']:,}) | {full['fit_s']:.1f} s | {full['objective']:.6g} |")
    print(f"| a uniform sample ({sampled['seed_rows']:,}) | {sampled['fit_s']:.1f} s | "
          f"{sampled['objective']:.6g} ({sampled['objective'] / full['objective']:.4f}x) |")

    t = run["timings"]
    io_s = t["read_s"] + t["write_s"]
    print("\ntargets (full fit):")
    print(f"  end to end <= 120 s: {run['wall_s']:.1f} s {'ok' if run['wall_s'] <= 120 else 'MISSED'}")
    print(f"  reading + writing <= clustering: {io_s:.1f} s vs {t['cluster_s']:.1f} s "
          f"{'ok' if io_s <= t['cluster_s'] else 'MISSED'}")
    print(f"  peak RSS <= 5 GB: {gb(run['peak_rss'])} {'ok' if run['peak_rss'] <= 5e9 else 'MISSED'}")
    print(f"  RSS growth <= 2.5x the matrix: {run['growth']:.2f}x {'ok' if run['growth'] <= 2.5 else 'MISSED'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="samples (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension (default 512)")
    parser.add_argument("--k", type=int, default=100, help="clusters (default 100)")
    parser.add_argument("--baseline-n", type=int, default=100_000,
                        help="samples of the values()/set_values comparison (default 100,000)")
    parser.add_argument("--fit-sample-size", type=int, default=None, help="streamed run's sample (default n/10)")
    parser.add_argument("--seeding-n", type=int, default=300_000,
                        help="samples of the seeding comparison (default 300,000)")
    parser.add_argument("--keep", action="store_true", help=f"keep (and reuse) the database in {KEEP_DIR}")
    parser.add_argument("--measure", choices=sorted(MEASUREMENTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.baseline_n = min(args.baseline_n, args.n)
    if args.measure:
        print(json.dumps(MEASUREMENTS[args.measure](args)))
        return

    loads = [load()]
    db_dir = KEEP_DIR if args.keep else tempfile.mkdtemp(prefix="imgclust-bench-scale-")
    plugins = tempfile.mkdtemp(prefix="imgclust-bench-plugins-")
    os.makedirs(os.path.join(plugins, "imgclust"))
    os.symlink(REPO_ROOT, os.path.join(plugins, "imgclust", "clustering"))
    mongod, uri = start_mongod(os.path.join(db_dir, "db"))
    env = dict(
        os.environ, FIFTYONE_DATABASE_URI=uri, FIFTYONE_PLUGINS_DIR=plugins, FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_SHOW_PROGRESS_BARS="false",
    )
    os.environ.update(env)
    try:
        import fiftyone.core.odm.database as food

        print(f"building/loading the dataset ({args.n:,} x {args.dim}) ...", flush=True)
        _, built_s = build(uri, args.n, args.dim, args.k)
        argv = [f"--n={args.n}", f"--dim={args.dim}", f"--k={args.k}", f"--baseline-n={args.baseline_n}",
                f"--seeding-n={args.seeding_n}"]
        if args.fit_sample_size:
            argv.append(f"--fit-sample-size={args.fit_sample_size}")
        results = {}
        for name in ("io", "run", "streamed", "seeding"):
            settle(uri, args.n, args.dim)
            print(f"measuring {name} (load {load()}) ...", flush=True)
            results[name] = in_subprocess(name, argv, env)
            loads.append(load())
        food._disconnect()
        report(args, built_s, results["io"], results["run"], results["streamed"], results["seeding"], loads)
    finally:
        mongod.terminate()  # stop mongod before its files go
        mongod.wait(60)
        shutil.rmtree(plugins, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(db_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
