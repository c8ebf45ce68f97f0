"""Benchmark of the run writer's guarantees (``clustering.runs.writer``): two
writers of one run, and kill -9 at random moments of every kind of write.

    .venv/bin/python bench/bench_writer.py [--trials 20] [--kills 8]

On its own MongoDB, with a dataset of 5,000 samples of 256-d embeddings in 4
blobs (the size of the issue's probe):

1. ``two writers``: ``--trials`` times, two processes start
   ``compute_clusters`` on one run key at the same moment (k=5 and k=8,
   ``overwrite=False``). Counted: trials where exactly one succeeded and the
   other got a clear error, and trials whose run is consistent afterwards
   (``check_run``: fields equal results, config k equal the labels).
2. ``kill -9``: for each of compute (overwrite), merge, split, assign and
   to_labels, ``--kills`` times: the action runs in a worker process, which is
   killed at a random moment: half the kills uniformly within 1.1x the
   action's duration, half within its write (after its journal appears on
   the claim; the durations are measured first, uninterrupted). Then
   ``check_run``: the run must be consistent, or interrupted (marked) and
   consistent after one ``check_run(repair=True)`` (a computation killed
   before it registered its new run may leave no run). Counted per action:
   consistent, marked and repaired, and unmarked inconsistent or failed
   repairs (must be 0).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from common import own_database, table  # noqa: E402  (bench/common.py)

WORKER = os.path.join(REPO_ROOT, "tests", "writer_worker.py")
DATASET = "bench-writer"


class Worker:
    """``tests/writer_worker.py`` in a subprocess."""

    def __init__(self, run_key, action, **spec):
        spec = dict(spec, dataset=DATASET, run_key=run_key, action=action)
        self.process = subprocess.Popen(
            [sys.executable, WORKER, json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )

    def wait_for(self, word):
        for line in self.process.stdout:
            if line.startswith(word):
                return
        raise RuntimeError(f"worker exited before '{word}'")

    def release(self):
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def outcome(self):
        out, _ = self.process.communicate(timeout=600)
        lines = [line for line in out.splitlines() if line.startswith(("ok", "error"))]
        return lines[-1] if lines else "no outcome"


def build(fo, n=5000, d=256, groups=4):
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=4.0, size=(groups, d))
    X = (centers[np.arange(n) % groups] + rng.normal(size=(n, d))).astype(np.float32)
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    dataset = fo.Dataset(DATASET, persistent=True)
    dataset.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg", emb=X[i]) for i in range(n)], progress=False)
    return dataset


def two_writers(clustering, dataset, trials):
    exclusive = consistent = 0
    errors = set()
    for _ in range(trials):
        if "same" in dataset.list_runs():
            clustering.delete_run(dataset, "same")
        workers = [Worker("same", "compute", k=k, barrier=True) for k in (5, 8)]
        for w in workers:
            w.wait_for("ready")
        for w in workers:
            w.release()
        outcomes = [w.outcome() for w in workers]
        ok = [o for o in outcomes if o.startswith("ok")]
        failed = [o for o in outcomes if o.startswith("error")]
        if len(ok) == 1 and len(failed) == 1:
            exclusive += 1
            errors.add(failed[0].split(" (pid")[0].split("; pass")[0][6:])
        report = clustering.check_run(dataset, "same")
        k = clustering.load_clustering_results(dataset, "same").config.k if report["state"] == "consistent" else None
        consistent += report["state"] == "consistent" and k == len(set(dataset.values("same_cluster")))
    table(
        f"Two compute_clusters on one run key, started together ({trials} trials)",
        ["outcome", "trials"],
        [["one succeeded, the other got a clear error", exclusive], ["run consistent afterwards", consistent]],
    )
    print("errors seen: " + "; ".join(sorted(errors)))
    return exclusive == consistent == trials


def _prepare(clustering, dataset, action):
    """The run ``c`` that ``action`` then changes."""
    samples = dataset.limit(4000) if action == "assign" else dataset
    clustering.compute_clusters(samples, "c", embeddings="emb", k=4, overwrite=True, progress=False)


ACTIONS = {
    "compute": dict(k=5, overwrite=True),
    "merge": dict(clusters=[0, 1]),
    "split": dict(cluster=2, k=3),
    "assign": {},
    "to_labels": dict(label_field="cluster_label"),
}


def _watch_journal(dataset, worker, timeout=600):
    """Polls the run's claim until the worker's journal appears; returns the
    moment (perf_counter) or None when the worker ended first."""
    from clustering.runs import writer

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline and worker.process.poll() is None:
        if (writer.claim_state(dataset, "c") or {}).get("journal"):
            return time.perf_counter()
        time.sleep(0.002)
    return None


def _measure(clustering, dataset, action, spec):
    """(duration of the action, duration of its journaled write), uninterrupted."""
    from clustering.runs import writer

    _prepare(clustering, dataset, action)
    worker = Worker("c", action, **spec)
    worker.wait_for("go")
    t0 = time.perf_counter()
    on = _watch_journal(dataset, worker)
    while (writer.claim_state(dataset, "c") or {}).get("journal"):
        time.sleep(0.002)
    off = time.perf_counter()
    assert worker.outcome().startswith("ok"), action
    return time.perf_counter() - t0, off - on


def _judge(clustering, dataset, action, counts):
    report = clustering.check_run(dataset, "c")
    if report["state"] == "consistent":
        counts["consistent"] += 1
    elif report["state"] == "interrupted":
        after = clustering.check_run(dataset, "c", repair=True)
        fine = after["state"] == "consistent" or (action == "compute" and after["state"] == "missing")
        counts["marked, repaired" if fine else "repair failed"] += 1
    else:
        counts["unmarked inconsistent"] += 1
        print(f"  {action}: {report}")


def kills(clustering, dataset, per_action, rng):
    """Half the kills at a uniform moment of the whole action, half inside its
    write (a uniform moment after its journal appears)."""
    rows, failures = [], 0
    for action, spec in ACTIONS.items():
        duration, window = _measure(clustering, dataset, action, spec)
        counts = {"consistent": 0, "marked, repaired": 0, "unmarked inconsistent": 0, "repair failed": 0}
        for trial in range(per_action):
            _prepare(clustering, dataset, action)
            worker = Worker("c", action, **spec)
            worker.wait_for("go")
            if trial % 2:
                time.sleep(rng.uniform(0.0, 1.1 * duration))
            elif _watch_journal(dataset, worker) is not None:
                time.sleep(rng.uniform(0.0, window))
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait()
            _judge(clustering, dataset, action, counts)
        failures += counts["unmarked inconsistent"] + counts["repair failed"]
        rows.append([action, f"{duration:.2f}", f"{window:.3f}", *counts.values()])
    table(
        f"kill -9 at a random moment ({per_action} per action: half anywhere in [0, 1.1x] the action's "
        "duration, half inside its journaled write)",
        ["action", "duration (s)", "write (s)", "consistent", "marked, repaired", "unmarked inconsistent", "repair failed"],
        rows,
    )
    return failures == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="two-writer trials")
    parser.add_argument("--kills", type=int, default=8, help="kills per action")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with own_database("imgclust-bench-writer-"):
        import fiftyone as fo

        import clustering

        dataset = build(fo)
        ok = two_writers(clustering, dataset, args.trials)
        ok &= kills(clustering, dataset, args.kills, random.Random(args.seed))
        print("\nall guarantees held" if ok else "\nA GUARANTEE FAILED")


if __name__ == "__main__":
    main()
