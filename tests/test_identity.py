"""Cluster identity across runs (clustering.runs.identity): matching by members,
a re-run that keeps its clusters' ids and names, new and vanished clusters,
and the comparison of two runs; on a real MongoDB."""

import numpy as np
import pytest

import clustering
from clustering.runs.identity import match_clusters


def test_matching_finds_permuted_clusters_new_and_vanished():
    ids = [f"s{i}" for i in range(300)]
    a = np.repeat([0, 1, 2], 100)
    b = np.repeat([5, 3, 9], 100)
    b[:10] = 3  # 10 samples of cluster 0 moved
    m = match_clusters(ids, a, ids, b)
    assert [(x["a"], x["b"]) for x in m["matches"]] == [(0, 5), (1, 3), (2, 9)]
    assert m["new"] == m["vanished"] == [] and len(m["moved"]) == 10 and m["compared"] == 300
    # a cluster split in two halves: one half keeps the identity, the other is new
    c = np.repeat([0, 1, 2, 3], [100, 100, 50, 50])
    m = match_clusters(ids, a, ids + ["x"], np.r_[c, 3])
    assert [(x["a"], x["b"]) for x in m["matches"]] == [(0, 0), (1, 1), (2, 2)] and m["new"] == [3]
    m = match_clusters(ids, a, ids[:200], a[:200])  # cluster 2's samples are gone
    assert m["vanished"] == [2] and m["new"] == []


def _blobs(rng, centers, n):
    return (centers[np.arange(n) % len(centers)] + rng.normal(size=(n, centers.shape[1]))).astype(np.float32)


@pytest.fixture
def grown(fo, request):
    """600 samples in 6 blobs (16-d), run 'r' (k=6) with every cluster named;
    then 60 more samples of the same blobs and 60 of a 7th blob."""
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=6.0, size=(7, 16))
    dataset = fo.Dataset("identity-" + request.node.name[:40])
    X = _blobs(rng, centers[:6], 600)
    dataset.add_samples([fo.Sample(filepath=f"/none/{i}.jpg", emb=x) for i, x in enumerate(X)])
    results = clustering.compute_clusters(dataset, "r", embeddings="emb", reduction="none", k=6, progress=False)
    for c in results.cluster_ids():
        clustering.set_cluster_name(dataset, "r", c, f"group {c}")
    more = np.r_[_blobs(rng, centers[:6], 60), _blobs(rng, centers[6:], 60)]
    dataset.add_samples([fo.Sample(filepath=f"/none/n{i}.jpg", emb=x, added=True) for i, x in enumerate(more)])
    yield dataset
    dataset.delete()


def test_a_re_run_on_a_grown_collection_keeps_names_and_reports_the_new_blob(grown):
    before = clustering.load_clustering_results(grown, "r")
    names = dict(before.names)
    results = clustering.compute_clusters(grown, "r", embeddings="emb", reduction="none", k=7, overwrite=True, progress=False)
    kept = [c for c, name in names.items() if results.names.get(c) == name]
    assert len(kept) >= 0.95 * len(names)
    record = results.edits[-1]
    assert record["action"] == "recompute" and record["outcome"]["vanished"] == []
    assert [e["action"] for e in results.edits[:-1]] == ["set_cluster_name"] * 6
    (new,) = record["outcome"]["new"]
    assert new == 6 and str(new) not in results.names  # an id the run never used, no name
    added = grown.match({"added": True})
    blob7 = [c for c, i in zip(added.values("r_cluster"), range(120)) if i >= 60]
    assert set(blob7) == {new}
    labels, stored_names = grown.values(["r_cluster", "r_name"])
    assert all(n == results.names.get(str(c)) for c, n in zip(labels, stored_names))
    assert clustering.check_run(grown, "r")["state"] == "consistent"

    fresh = clustering.compute_clusters(grown, "r", embeddings="emb", reduction="none", k=7, overwrite=True, keep_identity=False, progress=False)
    assert not fresh.names and not fresh.edits


def test_compare_runs_reports_the_matching(grown):
    clustering.compute_clusters(grown, "s", embeddings="emb", reduction="none", k=7, progress=False)
    cmp = clustering.compare_runs(grown, "r", "s")
    assert len(cmp["matches"]) == 6 and cmp["vanished"] == [] and len(cmp["new"]) == 1
    assert all(m["jaccard"] > 0.95 for m in cmp["matches"])
