"""clustering.runs.browse, the data behind the Clusters panel: its one aggregation
equals a per-sample Python computation over the run's fields, ground-truth
scores equal evaluate_run's, noise stays apart, sorting, the comparison's cell
views, the map; and the panel's on_load through FiftyOne's operator machinery.
On the demo's real images with pixel features, in a real MongoDB."""

import asyncio
import json
from collections import defaultdict

import numpy as np
import pytest

import clustering
from clustering.runs import browse
from conftest import PLUGIN_NAME, pixel_features

K = 5
quiet = lambda *a: None  # noqa: E731


@pytest.fixture(scope="module")
def ds(fo, demo_images_dir):
    """A pixel dataset with a generalized k-means run 'km' (k=5, huber) and an
    HDBSCAN run 'hdb' (with noise)."""
    from clustering.datasets import load_demo_dataset

    name = "test-browse-module"
    dataset = load_demo_dataset(name, images_dir=demo_images_dir, persistent=False, overwrite=True)
    ids, paths = dataset.values(["id", "filepath"])
    dataset.set_values("pixels", dict(zip(ids, list(pixel_features(paths)))), key_field="id")
    clustering.compute_clusters(dataset, "km", embeddings="pixels", reduction="none", k=K, loss="huber", n_init=2, progress=quiet)
    clustering.compute_clusters(dataset, "hdb", embeddings="pixels", reduction="none", method="hdbscan", min_cluster_size=10, progress=quiet)
    yield dataset
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


@pytest.fixture
def clone(ds, fo, request):
    name = "test-browse-" + request.node.name[:50]
    copy = ds.clone(name)
    yield copy
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def per_sample(dataset, run_key, num_thumbnails=browse.DEFAULT_NUM_THUMBNAILS):
    """The overview's numbers computed the slow way: every sample's values in
    Python, grouped by cluster."""
    ids, paths, labels, losses, ranks = dataset.values(
        ["id", "filepath", f"{run_key}_cluster", f"{run_key}_loss", f"{run_key}_rep"]
    )
    groups = defaultdict(list)
    reps = defaultdict(list)
    for i, path, c, loss, rank in zip(ids, paths, labels, losses, ranks):
        if c is None:
            continue
        groups[c].append(loss)
        if rank and rank <= num_thumbnails:
            reps[c].append((rank, i, path))
    return groups, {c: [(i, p) for _, i, p in sorted(r)] for c, r in reps.items()}


def test_overview_equals_a_per_sample_computation(ds):
    overview = browse.run_overview(ds, "km")
    groups, reps = per_sample(ds, "km")
    assert [r["cluster"] for r in overview["clusters"]] == sorted(groups) == list(range(K))
    for row in overview["clusters"]:
        losses = [v for v in groups[row["cluster"]] if v is not None]
        assert row["size"] == len(groups[row["cluster"]])
        assert row["compactness"] == pytest.approx(np.mean(losses), rel=1e-12)
        assert [(t["id"], t["filepath"]) for t in row["thumbnails"]] == reps[row["cluster"]]
        assert len(row["thumbnails"]) == browse.DEFAULT_NUM_THUMBNAILS
        assert all(t["url"] == clustering.runs.evaluation.media_url(t["filepath"]) for t in row["thumbnails"])
        assert "majority_class" not in row
    header = overview["header"]
    config = ds.get_run_info("km").config
    assert (header["method"], header["loss"], header["loss_param"], header["k"]) == (
        "generalized_kmeans", "huber", config.loss_param, K,
    )
    assert header["num_clustered"] == len(ds) and header["num_noise"] == 0
    # the objective is the sum of the losses, as the run computed it
    assert header["objective"] == pytest.approx(ds.load_run_results("km").objective, rel=1e-6)
    assert overview["noise"] is None and overview["evaluation"] is None


def test_a_cluster_size_is_the_count_of_its_view(ds):
    overview = browse.run_overview(ds, "km")
    for row in overview["clusters"]:
        assert len(clustering.load_run_view(ds, "km", cluster=row["cluster"])) == row["size"]


def test_ground_truth_scores_equal_evaluate_run(ds):
    overview = browse.run_overview(ds, "km", gt_field="ground_truth")
    reference = clustering.evaluate_run(ds, "km", gt_field="ground_truth")
    ev = overview["evaluation"]
    for key in ("nmi", "ari", "accuracy", "purity"):
        assert ev[key] == pytest.approx(reference[key], abs=1e-12), key
    assert ev["num_evaluated"] == reference["num_evaluated"] == len(ds)
    by_cluster = {r["cluster"]: r for r in reference["per_cluster"]}
    for row in overview["clusters"]:
        ref = by_cluster[row["cluster"]]
        assert (row["majority_class"], row["purity"]) == (ref["majority_class"], pytest.approx(ref["purity"]))


def test_noise_is_apart_and_left_out_of_the_scores(ds):
    overview = browse.run_overview(ds, "hdb", gt_field="ground_truth")
    labels = np.array(ds.values("hdb_cluster"))
    noise = int((labels == -1).sum())
    assert noise > 0, "the fixture's HDBSCAN run should have noise"
    assert overview["noise"] == {"size": noise} and overview["header"]["num_noise"] == noise
    assert all(r["cluster"] >= 0 for r in overview["clusters"])
    assert sum(r["size"] for r in overview["clusters"]) + noise == overview["header"]["num_clustered"] == len(ds)
    reference = clustering.evaluate_run(ds, "hdb", gt_field="ground_truth")
    assert overview["evaluation"]["num_evaluated"] == reference["num_evaluated"] == len(ds) - noise
    assert overview["evaluation"]["nmi"] == pytest.approx(reference["nmi"], abs=1e-12)


def test_string_ground_truth_and_samples_without_it(clone):
    """A plain string field, with some samples lacking it (left out, as evaluate_run does)."""
    ids, labels = clone.values(["id", "ground_truth.label"])
    clone.set_values("kind", {i: (None if n % 7 == 0 else label) for n, (i, label) in enumerate(zip(ids, labels))}, key_field="id")
    overview = browse.run_overview(clone, "km", gt_field="kind")
    reference = clustering.evaluate_run(clone, "km", gt_field="kind")
    assert overview["evaluation"]["num_evaluated"] == reference["num_evaluated"] < len(clone)
    assert overview["evaluation"]["ari"] == pytest.approx(reference["ari"], abs=1e-12)


def test_ground_truth_choices_leave_out_the_runs_fields(ds):
    assert browse.ground_truth_fields(ds) == ["ground_truth"]
    assert "km_cluster" in clustering.runs.evaluation.gt_fields(ds)


def test_sorting():
    rows = [
        {"cluster": 0, "size": 5, "compactness": 2.0},
        {"cluster": 1, "size": 9, "compactness": None},
        {"cluster": 2, "size": 9, "compactness": 1.0},
        {"cluster": 3, "size": 1, "compactness": 3.0},
    ]
    ids = lambda sort: [r["cluster"] for r in browse.sort_clusters(rows, sort)]  # noqa: E731
    assert ids("cluster") == [0, 1, 2, 3]
    assert ids("size") == [1, 2, 0, 3]  # largest first, ties by id
    assert ids("compactness") == [2, 0, 3, 1]  # tightest first, missing last
    assert ids("loosest") == [3, 0, 2, 1]
    with pytest.raises(ValueError, match="Unknown sort 'name'"):
        browse.sort_clusters(rows, "name")


def test_the_overview_follows_curation(clone):
    clustering.set_cluster_name(clone, "km", 1, "textures")
    target = clustering.merge_clusters(clone, "km", [2, 4])
    overview = browse.run_overview(clone, "km")
    rows = {r["cluster"]: r for r in overview["clusters"]}
    assert sorted(rows) == [0, 1, 2, 3] and target == 2
    assert rows[1]["name"] == "textures"
    assert rows[2]["size"] == len(clustering.load_run_view(clone, "km", cluster=2))
    assert sum(r["size"] for r in rows.values()) == len(clone)


def test_comparison_cells_are_the_views_of_their_pairs(ds):
    cmp = clustering.compare_runs(ds, "km", "hdb")
    table = cmp["contingency"]
    checked = 0
    for i, a in enumerate(table["rows"]):
        for j, b in enumerate(table["cols"]):
            view = browse.pair_view(ds, "km", a, "hdb", b)
            assert len(view) == table["counts"][i][j]
            checked += table["counts"][i][j] > 0
            if len(view):
                losses = view.values("km_loss")
                assert losses == sorted(losses)  # by loss to the center in run a
    assert checked >= 2


def test_map_points_carry_their_samples_and_clusters(clone):
    clustering.visualize_run(clone, "km", method="pca")
    assert browse.map_keys(clone, "km") == ["km_pca"]
    figure, n = browse.map_chart(clone, "km", "km_pca", max_points=100)
    assert n == 100
    label_of = dict(zip(*clone.values(["id", "km_cluster"])))
    seen = []
    for trace in figure["data"]:
        cluster = int(trace["name"].split()[1])
        assert len(trace["ids"]) == len(trace["x"]) == len(trace["y"])
        assert {label_of[i] for i in trace["ids"]} == {cluster}
        seen += trace["ids"]
    assert len(set(seen)) == 100


def test_errors_name_the_problem(ds):
    with pytest.raises(ValueError, match="No run with key 'nope'"):
        browse.run_overview(ds, "nope")
    with pytest.raises(ValueError, match="Ground-truth field 'nothing' does not exist"):
        browse.run_overview(ds, "km", gt_field="nothing")


def test_runs_on_patches_are_read_from_their_labels(fo, demo_images_dir):
    """Two boxes per image; the run's fields are label attributes."""
    from clustering.datasets import load_demo_dataset

    name = "test-browse-patches"
    dataset = load_demo_dataset(name, images_dir=demo_images_dir, persistent=False, overwrite=True).limit(40).clone(name + "-40")
    try:
        boxes = [[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 0.5, 1.0]]
        for sample in dataset.iter_samples(autosave=True):
            sample["objs"] = fo.Detections(detections=[fo.Detection(label=f"half{i}", bounding_box=b) for i, b in enumerate(boxes)])
        patches = dataset.to_patches("objs")
        X = np.random.default_rng(0).normal(size=(len(patches), 8)) + np.repeat([[0.0], [5.0]], len(patches) // 2, axis=0)
        clustering.compute_clusters(patches, "obj", embeddings=X, reduction="none", k=3, progress=quiet)
        overview = browse.run_overview(dataset, "obj")
        counts = dataset.count_values("objs.detections.obj_cluster")
        assert {r["cluster"]: r["size"] for r in overview["clusters"]} == counts
        label_ids = set(dataset.values("objs.detections.id", unwind=True))
        assert all(t["id"] in label_ids for r in overview["clusters"] for t in r["thumbnails"])
        assert overview["header"]["patches_field"] == "objs"
        with pytest.raises(ValueError, match="supports runs on images only"):
            browse.run_overview(dataset, "obj", gt_field="ground_truth")
    finally:
        for n in (name, name + "-40"):
            if fo.dataset_exists(n):
                fo.delete_dataset(n)


# ---------------------------------------------------------------------------
# the panel's events through FiftyOne's operator machinery (as the App sends them)


def panel_event(dataset, method, state=None, **params):
    """Runs the Clusters panel's ``method`` as the App does (an execution of
    the panel operator with its state) and returns ``(state, requests)``: the
    state after the event's patches, and the other operations it asks the App
    to run (``[(operator uri, params)]``)."""
    import pydash
    from fiftyone.operators.executor import _parse_ctx, execute_or_delegate_operator

    state = json.loads(json.dumps(state or {}))
    request = _parse_ctx(dataset=dataset, params=dict(params, __method__=method, panel_id="p", panel_state=state))
    result = asyncio.run(execute_or_delegate_operator(f"{PLUGIN_NAME}/clusters_panel", request))
    result.raise_exceptions()
    others = []
    for r in result.to_json()["executor"]["requests"]:
        if r["operator_uri"] == "patch_panel_state":
            for path, value in r["params"]["state"].items():
                pydash.set_(state, path, value)
        elif r["operator_uri"] not in ("patch_panel_data", "clear_panel_data", "show_panel_output"):
            others.append((r["operator_uri"], r["params"]))
    return state, others


def on_run(dataset, run_key):
    """The panel's state once it shows run ``run_key`` (picked in its Run input)."""
    state, _ = panel_event(dataset, "on_load")
    state, _ = panel_event(dataset, "on_change_run", state, path="controls.run_key", value=run_key)
    assert state["run_key"] == run_key == state["controls"]["run_key"]
    return state


def test_panel_opens_on_the_newest_run_with_its_rows(clone):
    clustering.compute_clusters(clone, "another", embeddings="pixels", reduction="none", method="kmeans", k=3, progress=quiet)
    clustering.compute_clusters(clone, "km", embeddings="pixels", reduction="none", k=K, loss="huber", n_init=2, overwrite=True, progress=quiet)
    state, _ = panel_event(clone, "on_load")
    assert state["run_keys"] == ["hdb", "another", "km"] and state["run_key"] == "km" == state["controls"]["run_key"]
    assert {r["cluster"]: r["size"] for r in state["rows"]} == clone.count_values("km_cluster")
    assert "huber" in state["header"] and f"{len(clone):,} samples clustered" in state["header"]
    assert (state["gt_field"], state["sort"], state["tab"]) == ("none", "cluster", "clusters")


def test_panel_inputs_act_only_on_a_new_value(ds):
    state, _ = panel_event(ds, "on_load")
    # an input reporting the value it already shows (as inputs do when they appear)
    same, others = panel_event(ds, "on_change_sort", state, path="controls.sort", value="cluster")
    assert same == state and not others
    state, _ = panel_event(ds, "on_change_sort", state, path="controls.sort", value="size")
    sizes = [r["size"] for r in state["rows"]]
    assert sizes == sorted(sizes, reverse=True) and state["controls"]["sort"] == "size"
    state, _ = panel_event(ds, "on_change_gt", state, path="controls.gt_field", value="ground_truth")
    assert "NMI" in state["header"] and all("majority_class" in r for r in state["rows"])


def test_panel_shows_a_cluster_and_opens_the_curation_forms(ds):
    state = on_run(ds, "km")
    state, others = panel_event(ds, "show_cluster", state, cluster=3)
    assert state["cluster"] == 3
    [(uri, params)] = others
    assert uri == "set_view"
    view = fo_view(ds, params["view"])
    assert view.values("km_cluster") == [3] * ds.count_values("km_cluster")[3]
    assert view.values("km_loss") == sorted(view.values("km_loss"))
    state["cards"] = {"c1": {"pick": True}, "c4": {"pick": True}, "c2": {"pick": False}}
    _, [(uri, params)] = panel_event(ds, "merge", state)
    assert uri == "prompt_user_for_operation"
    assert params["operator_uri"] == f"{PLUGIN_NAME}/merge_clusters"
    assert params["params"] == {"run_key": "km", "clusters": ["1", "4"]}
    assert params["on_success"].endswith("merge_done")


def test_panel_comparison_cells_and_map_selections_become_views(clone):
    clustering.visualize_run(clone, "km", method="pca")
    state = on_run(clone, "km")
    state, _ = panel_event(clone, "on_change_tab", state, path="tabs", value="compare")
    assert state["run_key_b"] == "hdb" and state["compare"]["run_key_b"] == "hdb"
    assert state["compare_summary"].startswith("ARI ") and state["heatmap_layout"]
    table = clustering.compare_runs(clone, "km", "hdb")["contingency"]
    i, j = np.unravel_index(np.argmax(table["counts"]), np.shape(table["counts"]))
    # a heatmap cell: its categories, as strings (y: this run, x: the compared one)
    _, [(uri, params)] = panel_event(clone, "show_pair", state, x=str(table["cols"][j]), y=str(table["rows"][i]))
    assert uri == "set_view" and len(fo_view(clone, params["view"])) == table["counts"][i][j]
    state, _ = panel_event(clone, "on_change_tab", state, path="tabs", value="charts")
    state, _ = panel_event(clone, "load_map", state)
    assert state["map_note"].startswith(f"{len(clone):,} points")
    lassoed = [{"idx": k, "id": i} for k, i in enumerate(clone.take(7, seed=1).values("id"))] + [{"idx": 9, "id": None}]
    _, [(uri, params)] = panel_event(clone, "show_selected_points", state, data=lassoed)
    assert uri == "set_view" and sorted(fo_view(clone, params["view"]).values("id")) == sorted(p["id"] for p in lassoed[:7])


def test_panel_pages_through_many_clusters(clone):
    clustering.compute_clusters(clone, "many", embeddings="pixels", reduction="none", method="kmeans", k=12, progress=quiet)
    state, _ = panel_event(clone, "on_load")
    assert state["run_key"] == "many" and state["num_pages"] == 2
    assert [r["cluster"] for r in state["rows"]] == list(range(10))
    state, _ = panel_event(clone, "next_page", state)
    assert state["page"] == 1 and [r["cluster"] for r in state["rows"]] == [10, 11]
    state, _ = panel_event(clone, "on_change_sort", state, path="controls.sort", value="size")
    sizes = clone.count_values("many_cluster")
    assert state["page"] == 0 and [r["size"] for r in state["rows"]] == sorted(sizes.values(), reverse=True)[:10]


def test_panel_refreshes_after_an_action(clone, plugin_operator):
    state = on_run(clone, "km")
    # an action with a result of another shape (label_clusters' "clusters" are dicts)
    named, others = panel_event(clone, "action_done", state, result={"clusters": [{"cluster": 0}]}, original_params={})
    assert named["rows"] == state["rows"] and not others
    state["cards"] = {"c1": {"pick": True}, "c4": {"pick": True}}
    result = plugin_operator("merge_clusters")(clone, "km", [1, 4])
    state, [(uri, params)] = panel_event(clone, "merge_done", state, result=result, original_params={})
    assert [r["cluster"] for r in state["rows"]] == [0, 1, 2, 3]
    assert state["cards"] == {"c1": {"pick": False}, "c4": {"pick": False}}
    assert state["cluster"] == 1 and uri == "set_view"
    assert len(fo_view(clone, params["view"])) == clone.count_values("km_cluster")[1]
    result = plugin_operator("split_cluster")(clone, "km", 1, k=2)
    state, [(uri, params)] = panel_event(clone, "split_done", state, result=result, original_params={})
    first = result["clusters"][0]
    assert [r["cluster"] for r in state["rows"]] == [0, 2, 3, *result["clusters"]]
    assert state["cluster"] == first and fo_view(clone, params["view"]).distinct("km_cluster") == [first]


def fo_view(dataset, stages):
    import fiftyone.core.view as fov

    return fov.DatasetView._build(dataset, stages)


def test_an_evaluated_run_opens_with_its_scores(clone):
    """evaluate_run records its ground-truth field in the run's config; the
    panel opens that run scored against it (and a run never evaluated keeps
    the current choice)."""
    clustering.compute_clusters(clone, "plain", embeddings="pixels", reduction="none", method="kmeans", k=3, progress=quiet)
    clustering.compute_clusters(clone, "judged", embeddings="pixels", reduction="none", method="kmeans", k=4, progress=quiet)
    assert browse.evaluated_field(clone, "judged") is None
    scores = clustering.evaluate_run(clone, "judged", gt_field="ground_truth")
    assert clone.get_run_info("judged").config.evaluated_gt_field == "ground_truth"
    assert browse.evaluated_field(clone, "judged") == "ground_truth"

    state, _ = panel_event(clone, "on_load")  # opens the newest run: "judged"
    assert state["run_key"] == "judged" and state["gt_field"] == "ground_truth"
    assert f"NMI {scores['nmi']:.3f}" in state["header"]
    state, _ = panel_event(clone, "on_change_run", state, path="controls.run_key", value="plain")
    assert state["gt_field"] == "ground_truth"  # "plain" was never evaluated: the choice stays
    state, _ = panel_event(clone, "on_change_gt", state, path="controls.gt_field", value="none")
    state, _ = panel_event(clone, "on_change_run", state, path="controls.run_key", value="judged")
    assert state["gt_field"] == "ground_truth" and "NMI" in state["header"]

    clone.delete_sample_field("ground_truth")  # a field that is gone is no longer offered
    assert browse.evaluated_field(clone, "judged") is None


def test_overview_cache_computes_again_only_when_the_run_changes(clone, monkeypatch):
    calls = []
    compute = browse.run_overview
    monkeypatch.setattr(browse, "run_overview", lambda *a, **k: calls.append(a[1]) or compute(*a, **k))
    cache = browse.OverviewCache()
    first = cache.get(clone, "km")
    assert cache.get(clone, "km") == first and len(calls) == 1  # paging, sorting: no new aggregation
    assert first["problem"] is None
    clustering.merge_clusters(clone, "km", [0, 1])  # any write stores new results
    merged = cache.get(clone, "km")
    assert len(calls) == 2 and merged["header"]["num_clusters"] == K - 1
    clone.delete_samples(clone.limit(3))
    assert cache.get(clone, "km")["header"]["num_clustered"] == len(clone) and len(calls) == 3
    with clustering.runs.writer.claimed(clone, "km", "merge_clusters"):  # a writer at work shows at once
        assert "being written by merge_clusters" in cache.get(clone, "km")["problem"] and len(calls) == 3


def test_panel_drills_down_a_cluster_tree_and_back_up(clone):
    clustering.subcluster(clone, "km", 1, k=3)
    clustering.subcluster(clone, "km", 4, k=2)
    state = on_run(clone, "km")  # the top run opens, not its level below
    assert state["run_key"] == "km" and not state.get("breadcrumb")
    children = {r["cluster"]: r["children"] for r in state["rows"]}
    assert children[1] == 3 and children[4] == 2 and children[0] == 0
    state, others = panel_event(clone, "drill_down", state, cluster=1)
    assert state["run_key"] == "km" and state["drill"] == {"run": "km_l2", "cluster": 1}  # the Run input stays
    assert "cluster **1**" in state["breadcrumb"] and len(state["rows"]) == 3
    assert all(r["path"].startswith("1/") for r in state["rows"])
    [(uri, params)] = others  # the grid shows the cluster whose sub-clusters these are
    assert uri == "set_view" and set(fo_view(clone, params["view"]).values("km_cluster")) == {1}
    child = state["rows"][0]["cluster"]
    state, [(uri, params)] = panel_event(clone, "show_cluster", state, cluster=child)
    assert set(fo_view(clone, params["view"]).values("km_l2_cluster")) == {child}
    state, others = panel_event(clone, "go_up", state)
    assert state["run_key"] == "km" and state["drill"] is None and state["cluster"] == 1
    [(uri, params)] = others  # the grid shows the cluster whose sub-clusters were browsed
    assert uri == "set_view" and set(fo_view(clone, params["view"]).values("km_cluster")) == {1}
    assert not state["breadcrumb"] and len(state["rows"]) == K
    _, [(uri, params)] = panel_event(clone, "subcluster", dict(state, cluster=2))
    assert uri == "prompt_user_for_operation" and params["operator_uri"] == f"{PLUGIN_NAME}/subcluster"
