"""The run writer (``clustering.runs.writer``) across real processes on the test
MongoDB: two writers of one run, a stale reader in another process, kill -9
in the middle of a write, and ``check_run``."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import clustering
from clustering.runs import writer

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "writer_worker.py")


def _blobs_dataset(fo, name, n, d, groups=8, seed=0):
    """A persistent dataset (other processes load it by name) of ``n``
    samples with ``d``-dimensional embeddings ``emb`` in ``groups`` blobs."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(groups, d))
    X = (centers[np.arange(n) % groups] + rng.normal(size=(n, d))).astype(np.float32)
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg", emb=X[i]) for i in range(n)], progress=False)
    return dataset


@pytest.fixture
def blobs(fo, request):
    dataset = _blobs_dataset(fo, "writer-" + request.node.name[:50], 3000, 32)
    yield dataset
    dataset.delete()


class Worker:
    """``tests/writer_worker.py`` in a subprocess."""

    def __init__(self, dataset, run_key, action, **spec):
        spec = dict(spec, dataset=dataset.name, run_key=run_key, action=action)
        self.process = subprocess.Popen(
            [sys.executable, WORKER, json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def wait_for(self, word, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"worker exited before '{word}': {self.process.stderr.read()[-2000:]}")
            if line.startswith(word):
                return line.strip()
        raise AssertionError(f"no '{word}' from the worker in {timeout} s")

    def release(self):
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def outcome(self, timeout=300):
        out, err = self.process.communicate(timeout=timeout)
        last = [line for line in out.splitlines() if line.startswith(("ok", "error"))]
        assert last, f"no outcome; stderr: {err[-2000:]}"
        return last[-1]


def _run(dataset, run_key, action, **spec):
    worker = Worker(dataset, run_key, action, **spec)
    return worker.outcome()


def _assert_consistent(dataset, run_key):
    report = clustering.check_run(dataset, run_key)
    assert report["state"] == "consistent", report
    results = clustering.load_clustering_results(dataset, run_key)
    labels = dict(zip(*dataset.values(["id", results.config.label_field])))
    assert [labels[i] for i in results.sample_ids] == np.asarray(results.labels).tolist()
    return results


def test_two_computes_on_one_key_leave_one_consistent_run_and_one_clear_error(blobs):
    for _ in range(3):
        if "same" in blobs.list_runs():
            clustering.delete_run(blobs, "same")
        workers = [Worker(blobs, "same", "compute", k=k, barrier=True) for k in (5, 8)]
        for w in workers:
            w.wait_for("ready")
        for w in workers:
            w.release()
        outcomes = [w.outcome() for w in workers]
        ok = [o for o in outcomes if o.startswith("ok")]
        errors = [o for o in outcomes if o.startswith("error")]
        assert len(ok) == 1 and len(errors) == 1, outcomes
        assert "is being written by compute_clusters" in errors[0] or "already exists" in errors[0], errors
        results = _assert_consistent(blobs, "same")
        assert results.config.k == json.loads(ok[0][3:]) == len(set(blobs.values("same_cluster")))


def test_a_second_writer_fails_at_once_naming_the_first(blobs):
    clustering.compute_clusters(blobs, "c", embeddings="emb", reduction="none", k=4)
    with writer.claimed(blobs, "c", "merge_clusters"):
        t0 = time.perf_counter()
        with pytest.raises(writer.RunBusyError, match=r"Run 'c' is being written by merge_clusters \(pid \d+"):
            clustering.compute_clusters(blobs, "c", embeddings="emb", reduction="none", k=3, overwrite=True)
        assert time.perf_counter() - t0 < 5
        assert clustering.check_run(blobs, "c")["state"] == "busy"
    assert clustering.load_clustering_results(blobs, "c").config.k == 4


def test_curation_from_a_stale_process_keeps_every_edit(blobs):
    """The issue's case: A loads the results, B merges [0, 1], A (after
    reload, and again without) merges [2, 3], then [4, 5]."""
    clustering.compute_clusters(blobs, "c", embeddings="emb", reduction="none", k=8)
    stale = clustering.load_clustering_results(blobs, "c")
    assert stale.cluster_ids() == list(range(8))
    assert _run(blobs, "c", "merge", clusters=[0, 1]) == "ok 0"
    blobs.reload()
    clustering.merge_clusters(blobs, "c", [2, 3])
    assert _run(blobs, "c", "merge", clusters=[6, 7]).startswith("ok")
    clustering.merge_clusters(blobs, "c", [4, 5])  # no reload
    results = _assert_consistent(blobs, "c")
    assert [e["params"]["clusters"] for e in results.edits] == [[0, 1], [2, 3], [6, 7], [4, 5]]
    assert results.cluster_ids() == [0, 2, 4, 6]
    assert np.asarray(results.cluster_sizes)[[0, 2, 4, 6]].tolist() == [750] * 4


def test_concurrent_edits_from_two_processes_are_serialized(blobs):
    clustering.compute_clusters(blobs, "c", embeddings="emb", reduction="none", k=8)
    workers = [Worker(blobs, "c", "merge", clusters=pair, barrier=True) for pair in ([0, 1], [2, 3])]
    for w in workers:
        w.wait_for("ready")
    for w in workers:
        w.release()
    assert sorted(w.outcome() for w in workers) == ["ok 0", "ok 2"]
    results = _assert_consistent(blobs, "c")
    assert sorted(e["params"]["clusters"] for e in results.edits) == [[0, 1], [2, 3]]


@pytest.fixture
def large(fo):
    dataset = _blobs_dataset(fo, "writer-large", 5000, 256, groups=4, seed=1)
    yield dataset
    dataset.delete()


def _duration(dataset, action, **spec):
    worker = Worker(dataset, "c", action, **spec)
    worker.wait_for("go")
    t0 = time.perf_counter()
    assert worker.outcome().startswith("ok")
    return time.perf_counter() - t0


@pytest.mark.slow
def test_kill_9_during_merge_leaves_the_run_consistent_or_marked_and_repairable(large):
    clustering.compute_clusters(large, "c", embeddings="emb", reduction="none", k=4)
    duration = _duration(large, "merge", clusters=[0, 1])
    rng = random.Random(0)
    states = []
    for trial in range(4):
        clustering.compute_clusters(large, "c", embeddings="emb", reduction="none", k=4, overwrite=True)
        worker = Worker(large, "c", "merge", clusters=[0, 1])
        worker.wait_for("go")
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        report = clustering.check_run(large, "c")
        states.append(report["state"])
        assert report["state"] in ("consistent", "interrupted"), report
        if report["state"] == "interrupted":
            assert report["journal"]["action"] == "merge_clusters"
            with pytest.raises(writer.RunInterruptedError, match="check_run"):
                clustering.merge_clusters(large, "c", [2, 3])
            repaired = clustering.check_run(large, "c", repair=True)
            assert repaired["state"] == "consistent" and repaired["repaired"], repaired
        _assert_consistent(large, "c")
    assert states  # every kill was judged


def test_check_run_finds_and_repairs_fields_edited_behind_the_runs_back(blobs):
    results = clustering.compute_clusters(blobs, "c", embeddings="emb", reduction="none", k=4)
    ids = results.sample_ids[:10]
    blobs.select(ids).set_values("c_cluster", [99] * 10)
    blobs.select(results.sample_ids[10:12]).set_values("c_loss", [None, None])
    report = clustering.check_run(blobs, "c")
    assert report["state"] == "inconsistent"
    assert report["mismatches"] == {"c_cluster": 10, "c_loss": 2}
    repaired = clustering.check_run(blobs, "c", repair=True)
    assert repaired["state"] == "consistent" and "rewrote" in " ".join(repaired["repaired"])
    _assert_consistent(blobs, "c")


def test_interrupted_steps_are_finished_by_one_repair(blobs, monkeypatch):
    """A failure between the results and the fields, as a kill leaves it:
    the journal stays, edits are refused, and one repair finishes the step."""
    from clustering.runs import storage

    clustering.compute_clusters(blobs, "c", embeddings="emb", reduction="none", k=4)
    original = storage.write_fields

    def crash_on(path):
        def write_fields(dataset, columns, *args, **kwargs):
            if path in columns:
                raise KeyboardInterrupt  # like a kill: no cleanup of ours runs
            return original(dataset, columns, *args, **kwargs)

        return write_fields

    monkeypatch.setattr(storage, "write_fields", crash_on("c_cluster"))
    with pytest.raises(KeyboardInterrupt):
        clustering.merge_clusters(blobs, "c", [0, 1])
    monkeypatch.setattr(storage, "write_fields", original)
    report = clustering.check_run(blobs, "c")
    assert report["state"] == "interrupted" and report["journal"]["action"] == "merge_clusters"
    assert report["mismatches"]["c_cluster"] == 750  # results merged, fields not yet
    assert "was interrupted while merge_clusters" in clustering.get_run_info(blobs, "c")["status"]
    with pytest.raises(writer.RunInterruptedError, match="repair=True"):
        clustering.split_cluster(blobs, "c", 2)
    assert clustering.check_run(blobs, "c", repair=True)["state"] == "consistent"
    assert _assert_consistent(blobs, "c").cluster_ids() == [0, 2, 3]

    monkeypatch.setattr(storage, "write_fields", crash_on("cluster_label"))
    with pytest.raises(KeyboardInterrupt):
        clustering.to_labels(blobs, "c", "cluster_label")
    monkeypatch.setattr(storage, "write_fields", original)
    assert not blobs.exists("cluster_label") or len(blobs.exists("cluster_label")) == 0
    repaired = clustering.check_run(blobs, "c", repair=True)
    assert "re-applied to_labels" in repaired["repaired"] and repaired["state"] == "consistent"
    assert len(blobs.exists("cluster_label")) == len(blobs)
    assert set(blobs.distinct("cluster_label.label")) == {"cluster_0", "cluster_2", "cluster_3"}
