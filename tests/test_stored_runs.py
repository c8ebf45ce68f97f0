"""Runs stored by earlier versions of the plugin still load, browse, curate
and assign. ``tests/fixtures/run_stored_by_v1`` is a dataset exported with
its runs (FiftyOne's dataset format) by the code of commit ebd4971 (before
the run writer and the typed configs): 48 samples with 8-d embeddings ``emb``
in 4 groups (``truth``), the first 40 clustered as run ``old``
(generalized k-means, Huber, L2-normalized, PCA to 6 dimensions, k=5), then
clusters 3 and 4 merged and cluster 0 named "first group"."""

import os

import numpy as np
import pytest

import clustering
from clustering.runs import browse
from clustering.runs.model import RunModel

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "run_stored_by_v1")


@pytest.fixture
def stored(fo, request):
    name = "stored-" + request.node.name[:50]
    dataset = fo.Dataset.from_dir(FIXTURE, fo.types.FiftyOneDataset, name=name)
    yield dataset
    dataset.delete()


def test_a_v1_run_loads_checks_and_browses(stored):
    info = clustering.get_run_info(stored, "old")
    assert info["status"] == "completed" and info["config"]["loss"] == "huber"
    assert info["summary"]["num_clusters"] == 4 and info["summary"]["num_clustered"] == 40
    assert clustering.check_run(stored, "old")["state"] == "consistent"
    results = clustering.load_clustering_results(stored, "old")
    assert results.cluster_ids() == [0, 1, 2, 3] and results.names == {"0": "first group"}
    assert [e["action"] for e in results.edits] == ["merge_clusters", "set_cluster_name"]
    overview = browse.run_overview(stored, "old", gt_field="truth")
    assert [r["size"] for r in overview["clusters"]] == [int(results.cluster_sizes[c]) for c in results.cluster_ids()]
    assert overview["clusters"][0]["name"] == "first group" and overview["evaluation"]["nmi"] > 0.5
    assert len(clustering.load_run_view(stored, "old", cluster=3)) == results.cluster_sizes[3]


def test_a_v1_run_curates_and_assigns(stored):
    assert clustering.assign_new_samples(stored, "old") == 8  # its stored PCA maps the new samples
    results = clustering.load_clustering_results(stored, "old")
    new = results.sample_ids[40:]
    labels = dict(zip(*stored.values(["id", "old_cluster"])))
    assert all(labels[i] is not None for i in new)
    # the stored model (features, centers, loss) gives the run's own losses
    model = RunModel.of(results)
    _, X = model.features(stored.select(results.sample_ids[:40]), results.sample_ids[:40])
    column = {c: j for j, c in enumerate(model.live)}
    own = model.losses(X)[np.arange(40), [column[c] for c in results.labels[:40]]]
    np.testing.assert_allclose(own, results.sample_losses[:40], rtol=1e-4)
    new_ids = clustering.split_cluster(stored, "old", 1, k=2)
    assert clustering.merge_clusters(stored, "old", [0, new_ids[0]]) == 0
    clustering.rename_run(stored, "old", "renamed")
    report = clustering.check_run(stored, "renamed")
    assert report["state"] == "consistent", report
    assert [e["action"] for e in clustering.load_clustering_results(stored, "renamed").edits][-3:] == [
        "assign_new_samples", "split_cluster", "merge_clusters",
    ]
