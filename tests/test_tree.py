"""Cluster trees (clustering.runs.tree): a two-level tree of blobs in one call, a
drill-down on one cluster, the tree's path fields, curation at a level, and
deleting the top run; on a real MongoDB."""

import numpy as np
import pytest

import clustering
from clustering.engine import metrics as cm


@pytest.fixture
def nested(fo, request):
    """640 samples in 5 groups of 4 sub-groups (16-d): groups far apart,
    sub-groups apart within a group; ``group`` and ``sub`` hold the truth."""
    rng = np.random.default_rng(11)
    tops = rng.normal(scale=40.0, size=(5, 16))
    subs = tops[:, None, :] + rng.normal(scale=8.0, size=(5, 4, 16))
    n = 640
    g, s = np.arange(n) % 5, (np.arange(n) // 5) % 4
    X = (subs[g, s] + rng.normal(size=(n, 16))).astype(np.float32)
    dataset = fo.Dataset("tree-" + request.node.name[:40])
    dataset.add_samples([
        fo.Sample(filepath=f"/none/{i}.jpg", emb=X[i], group=str(g[i]), sub=f"{g[i]}/{s[i]}") for i in range(n)
    ])
    yield dataset
    dataset.delete()


def test_a_two_level_tree_recovers_both_levels(nested, fo):
    top = clustering.compute_clusters(nested, "t", embeddings="emb", reduction="none", levels=[5, 4], progress=False)
    assert top.config.k == 5 and "t_l2" in nested.list_runs()
    level = clustering.load_clustering_results(nested, "t_l2")
    assert level.config.parent_run == "t" and level.config.level == 2 and len(level.cluster_ids()) == 20
    truth = dict(zip(*nested.values(["id", "group"])))
    assert cm.nmi([truth[i] for i in top.sample_ids], top.labels) >= 0.95
    truth = dict(zip(*nested.values(["id", "sub"])))
    assert cm.nmi([truth[i] for i in level.sample_ids], level.labels) >= 0.95
    # the sidebar filters a sub-cluster by its path; each path names its parent
    paths, parents = nested.values(["t_l2_path", "t_cluster"])
    assert all(p.split("/")[0] == str(c) for p, c in zip(paths, parents))
    assert len(set(paths)) == 20
    tree = clustering.cluster_tree(nested, "t")
    assert len(tree) == 5 and all(len(node["children"]) == 4 for node in tree)
    assert sum(child["size"] for child in tree[0]["children"]) == tree[0]["size"]
    # every cluster of each level has its stability score (well separated sub-groups: high)
    scores = [child["stability"] for node in tree for child in node["children"]]
    assert len(scores) == 20 and min(scores) > 0.8 and max(scores) <= 1.0
    assert all(node["stability"] > 0.8 for node in tree)
    assert clustering.check_run(nested, "t_l2")["state"] == "consistent"

    # curation at a level: siblings merge, cousins do not; the top run keeps its clusters
    first, second = tree[0]["children"][:2]
    cousin = tree[1]["children"][0]
    with pytest.raises(ValueError, match="different parents"):
        clustering.merge_clusters(nested, "t_l2", [first["cluster"], cousin["cluster"]])
    with pytest.raises(ValueError, match="has sub-clusters in run 't_l2'"):
        clustering.merge_clusters(nested, "t", [0, 1])
    merged = clustering.merge_clusters(nested, "t_l2", [first["cluster"], second["cluster"]])
    assert len(clustering.cluster_tree(nested, "t")[0]["children"]) == 3
    assert clustering.check_run(nested, "t_l2")["state"] == "consistent"
    assert clustering.to_labels(nested, "t_l2", "sub_labels") == len(nested)
    assert merged in clustering.load_clustering_results(nested, "t_l2").cluster_ids()

    # new samples go to the nearest sub-cluster of their cluster one level up
    added = nested.take(20, seed=1).values("emb")
    nested.add_samples([fo.Sample(filepath=f"/none/new{i}.jpg", emb=np.asarray(x) + 0.1) for i, x in enumerate(added)])
    assert clustering.assign_new_samples(nested, "t") == 20
    assert clustering.assign_new_samples(nested, "t_l2") == 20
    paths, parents = nested.values(["t_l2_path", "t_cluster"])
    assert all(p.split("/")[0] == str(c) for p, c in zip(paths, parents))

    clustering.delete_run(nested, "t")
    assert nested.list_runs() == [] and not nested.has_field("t_l2_path")


def test_drilling_down_one_cluster_leaves_the_run_unchanged(nested):
    top = clustering.compute_clusters(nested, "t", embeddings="emb", reduction="none", k=5, progress=False)
    before = nested.values("t_cluster")
    key, children = clustering.subcluster(nested, "t", 2)  # k chosen for its members
    assert key == "t_l2" and len(children) == 4
    assert nested.values("t_cluster") == before
    assert clustering.load_clustering_results(nested, "t").edits == top.edits
    level = clustering.load_clustering_results(nested, "t_l2")
    assert set(level.sample_ids) == set(nested.match({"t_cluster": 2}).values("id"))
    _, again = clustering.subcluster(nested, "t", 2, k=2)  # replaces them
    _, others = clustering.subcluster(nested, "t", 3, k=3)
    level = clustering.load_clustering_results(nested, "t_l2")
    assert set(level.stability) == {str(c) for c in level.cluster_ids()}  # replaced ones dropped, new ones scored
    tree = {node["cluster"]: node for node in clustering.cluster_tree(nested, "t")}
    assert [c["cluster"] for c in tree[2]["children"]] == again and [c["cluster"] for c in tree[3]["children"]] == others
    assert tree[0]["children"] == []
    assert clustering.check_run(nested, "t_l2")["state"] == "consistent"
    clustering.rename_run(nested, "t", "top")  # the level keeps its link to the renamed run
    assert clustering.load_clustering_results(nested, "t_l2").config.parent_run == "top"
    assert [len(node["children"]) for node in clustering.cluster_tree(nested, "top")] == [0, 0, 2, 3, 0]
