"""choose_k, evaluate_run, compare_runs, plot_silhouette, visualize_run and
run_summary: the plain functions and the operators (SDK calls, the App's
streamed messages, delegated execution), on the demo's real images with
pixel features, against scikit-learn references."""

import asyncio
import itertools
import json
import os
from urllib.parse import unquote

import numpy as np
import pytest
from sklearn import metrics as skm

import clustering
from clustering.features import transform as cf
from clustering.engine import metrics as cm
from clustering.engine.methods import get_method
from conftest import PLUGIN_NAME, form, pixel_features

K = 5


@pytest.fixture(scope="module")
def ds(fo, demo_images_dir):
    """One pixel dataset for the module, with a k-means run 'km' (k=5) and
    'km_b' (another seed)."""
    from clustering.datasets import load_demo_dataset

    name = "test-evaluation-module"
    dataset = load_demo_dataset(name, images_dir=demo_images_dir, persistent=False, overwrite=True)
    ids, paths = dataset.values(["id", "filepath"])
    dataset.set_values("pixels", dict(zip(ids, list(pixel_features(paths)))), key_field="id")
    clustering.compute_clusters(dataset, "km", embeddings="pixels", reduction="none", method="kmeans", k=K, progress=lambda *a: None)
    clustering.compute_clusters(dataset, "km_b", embeddings="pixels", reduction="none", method="kmeans", k=K, random_state=7, progress=lambda *a: None)
    yield dataset
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


@pytest.fixture
def clone(ds, fo, request):
    name = "test-eval-" + request.node.name[:50]
    copy = ds.clone(name)
    yield copy
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def pixels(dataset):
    return np.stack(dataset.values("pixels")).astype(np.float32)


def gt(dataset):
    return np.array(dataset.values("ground_truth.label"))


def one_hot(values):
    classes = sorted(set(values))
    X = np.zeros((len(values), len(classes)), dtype=np.float32)
    X[np.arange(len(values)), [classes.index(v) for v in values]] = 10.0
    return X


def app_messages(name, dataset, params):
    """Runs an operator as the App does (generator, not exhausted) and returns
    its streamed messages as the JSON the App receives."""
    from fiftyone.operators.executor import _parse_ctx, execute_or_delegate_operator

    async def run():
        result = await execute_or_delegate_operator(
            f"{PLUGIN_NAME}/{name}", _parse_ctx(dataset=dataset, params=params), exhaust=False
        )
        result.raise_exceptions()
        assert result.is_generator
        return [json.loads(m.to_json_line()) for m in result.result]

    return asyncio.run(run())


def triggered(messages, operator):
    return [m["body"]["params"] for m in messages if m["body"]["operator_uri"] == operator]


def shown(messages):
    """(outputs schema, results) of the one show_output message; every Plotly
    figure in it must be valid for plotly.graph_objects.Figure."""
    import plotly.graph_objects as go

    (out,) = triggered(messages, "show_output")
    results = dict(out["results"])
    for name, prop in out["outputs"]["type"]["properties"].items():
        view = prop.get("view") or {}
        if view.get("name") == "PlotlyView":
            # the App's PlotlyView draws the value (traces) with the view's layout
            assert isinstance(results[name], list) and view["layout"] and view["height"]
            results[name] = go.Figure({"data": results[name], "layout": view["layout"]}).to_plotly_json()  # validates
    return out["outputs"], results


# ---------------------------------------------------------------------------
# choose_k


def test_choose_k_metrics_equal_sklearn_on_refits(ds):
    r = clustering.choose_k(ds, "pixels", method="kmeans", k_min=2, k_max=6, n_init=2, random_state=3, progress=lambda *a: None)
    json.dumps(r)  # plain JSON
    X = pixels(ds)
    method = get_method("kmeans")
    params = method.resolve_params({"n_init": 2, "random_state": 3})
    assert [row["k"] for row in r["per_k"]] == [2, 3, 4, 5, 6] and r["metrics"]["k"] == [2, 3, 4, 5, 6]
    assert r["silhouette_exact"] and r["silhouette_sample_size"] == len(ds) == r["num_samples"]
    for row in r["per_k"]:
        out = method.fit(X, row["k"], params)
        assert row["objective"] == pytest.approx(out.objective, rel=1e-5)
        assert row["silhouette"] == pytest.approx(skm.silhouette_score(X, out.labels), abs=1e-5)
        assert row["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(X, out.labels), rel=1e-4)
        assert row["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(X, out.labels), rel=1e-4)
        assert sorted(row["cluster_sizes"]) == sorted(np.bincount(out.labels).tolist())
        assert -1 <= row["stability"] <= 1 and np.isfinite(row["gap"]) and row["gap_se"] >= 0
    ks = r["metrics"]["k"]
    assert r["best"]["silhouette"] == ks[int(np.argmax(r["metrics"]["silhouette"]))]
    assert r["best"]["davies_bouldin"] == ks[int(np.argmin(r["metrics"]["davies_bouldin"]))]
    assert r["best"]["calinski_harabasz"] == ks[int(np.argmax(r["metrics"]["calinski_harabasz"]))]
    assert r["best"]["stability"] == ks[int(np.argmax(r["metrics"]["stability"]))]
    knee, _ = cm.find_knee(ks, r["metrics"]["objective"], min_strength=0.05)
    assert r["best"]["elbow"] == (None if knee is None else ks[knee])
    assert (r["recommended_k"], r["reason"], r["best"]) == clustering.recommend_k(ks, r["metrics"])
    assert r["agree"] == [c for c, k in r["best"].items() if k == r["recommended_k"]] and r["agree"]


def test_choose_k_on_arrays_equals_choose_k_on_the_same_vectors_in_a_field(ds):
    params = dict(loss="huber", k_min=2, k_max=5, n_init=1, sample_size=100, random_state=4, progress=False)
    on_field = clustering.choose_k(ds, "pixels", **params)
    alone = clustering.choose_k(None, embeddings=pixels(ds), **params)
    aligned = clustering.choose_k(ds, pixels(ds), **params)
    assert on_field["embeddings_field"] == "pixels" and alone["embeddings_field"] is None
    for r in (alone, aligned):
        assert dict(r, embeddings_field="pixels") == on_field
    assert on_field["recommended_k"] in on_field["best"].values() and on_field["loss_param"] > 0


def test_choose_k_sampled_silhouette_scores_the_sample_against_all_points(ds):
    r = clustering.choose_k(ds, "pixels", method="kmeans", k_min=3, k_max=5, n_init=1, sample_size=60, random_state=11, progress=lambda *a: None)
    assert not r["silhouette_exact"] and r["silhouette_sample_size"] == 60
    X = pixels(ds)
    idx = cm.sample_indices(len(X), 60, 11)
    params = get_method("kmeans").resolve_params({"n_init": 1, "random_state": 11})
    for row in r["per_k"]:
        labels = get_method("kmeans").fit(X, row["k"], params).labels
        assert row["silhouette"] == pytest.approx(skm.silhouette_samples(X, labels)[idx].mean(), abs=1e-5)


def test_choose_k_operator_generalized_loss_keeps_one_loss_param(ds, plugin_operator):
    r = plugin_operator("choose_k")(ds, "pixels", loss="huber", k_min=2, k_max=5, n_init=1)
    assert r["method"] == "generalized_kmeans" and r["loss"] == "huber"
    assert r["loss_param"] > 0 and r["params"]["loss_param"] == r["loss_param"]
    assert [row["k"] for row in r["per_k"]] == [2, 3, 4, 5]
    assert 2 <= r["recommended_k"] <= 5 and r["recommended_k"] in r["best"].values()
    assert all(row["silhouette"] is not None and -1 <= row["silhouette"] <= 1 for row in r["per_k"])


def test_choose_k_in_the_app_streams_progress_and_plots(ds):
    messages = app_messages("choose_k", ds, {"embeddings": "pixels", "method": "kmeans", "k_min": 2, "k_max": 5, "n_init": 1})
    assert len(triggered(messages, "set_progress")) >= 4
    outputs, results = shown(messages)
    props = outputs["type"]["properties"]
    for name in ("criteria", "elbow", "silhouette", "davies_bouldin", "calinski_harabasz", "stability", "gap"):
        assert props[name]["view"]["name"] == "PlotlyView"
        assert list(results[name]["data"][0]["x"]) == [2, 3, 4, 5]
    rec = int(results["recommendation"].split("Recommended k = ")[1].split()[0])
    assert results["elbow"]["layout"]["shapes"][0]["x0"] == rec  # marker line at the recommended k
    votes = results["criteria"]["data"][0]["y"]  # how many of the six criteria pick each k
    assert sum(votes) <= 6 and votes[[2, 3, 4, 5].index(rec)] >= 1
    sil = results["silhouette"]["data"]
    assert list(sil[1]["x"]) == [rec] and sil[1]["y"][0] == max(sil[0]["y"])  # circled maximum
    assert [row["k"] for row in results["per_k"]] == [2, 3, 4, 5]


def test_choose_k_delegated_stores_its_result(ds, plugin_operator):
    from fiftyone.operators.delegated import DelegatedOperationService

    queued = plugin_operator("choose_k")(ds, "pixels", method="kmeans", k_min=2, k_max=4, n_init=1, delegate=True)
    assert queued.delegated
    service = DelegatedOperationService()
    op_id = queued.result["id"]
    service.execute_operation(service.get(op_id))
    doc = service.get(op_id)
    assert doc.run_state == "completed", doc.result
    assert doc.result.result["recommended_k"] in (2, 3, 4)
    assert [row["k"] for row in doc.result.result["per_k"]] == [2, 3, 4]


def test_choose_k_validates(ds):
    with pytest.raises(ValueError, match="at most n - 1"):
        clustering.choose_k(ds, "pixels", method="kmeans", k_min=2, k_max=len(ds))
    with pytest.raises(ValueError, match="chooses its own number"):
        clustering.choose_k(ds, "pixels", method="hdbscan")
    with pytest.raises(ValueError, match="no loss option"):
        clustering.choose_k(ds, "pixels", method="kmeans", loss="huber")
    with pytest.raises(ValueError, match="at least 3 values"):
        clustering.choose_k(ds, "pixels", k_min=4, k_max=5)


# ---------------------------------------------------------------------------
# evaluate_run


def test_evaluate_run_equals_references(ds, plugin_operator):
    r = plugin_operator("evaluate_run")(ds, "km", gt_field="ground_truth")
    json.dumps(r)
    y_true, y_pred = gt(ds), np.array(ds.values("km_cluster"))
    assert r["num_evaluated"] == len(ds) and r["excluded"] == {"no_cluster_label": 0, "noise": 0, "no_ground_truth": 0}
    assert r["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y_true, y_pred))
    assert r["ari"] == pytest.approx(skm.adjusted_rand_score(y_true, y_pred))
    classes = sorted(set(y_true))
    assert len(classes) == K
    best = max(
        sum(np.sum((y_pred == c) & (y_true == perm[c])) for c in range(K))
        for perm in itertools.permutations(classes)
    )
    assert r["accuracy"] == pytest.approx(best / len(ds))
    for row in r["per_cluster"]:
        members = y_true[y_pred == row["cluster"]]
        values, counts = np.unique(members, return_counts=True)
        assert row["size"] == len(members)
        assert row["purity"] == pytest.approx(counts.max() / len(members))
        assert row["majority_class"] == values[np.argmax(counts)]
    assert r["purity"] == pytest.approx(sum(row["majority_count"] for row in r["per_cluster"]) / len(ds))
    assert np.sum(r["contingency"]["counts"]) == len(ds) and r["contingency"]["cols"] == classes


def test_evaluate_run_excludes_and_counts_and_takes_string_fields(clone):
    ids = clone.values("id")
    clustering.compute_clusters(clone.skip(5), "part", embeddings="pixels", reduction="none", method="kmeans", k=K, progress=lambda *a: None)
    clone.set_values("gt_str", dict(zip(ids, clone.values("ground_truth.label"))), key_field="id")
    full_str = clustering.evaluate_run(clone, "km", gt_field="gt_str")
    full_cls = clustering.evaluate_run(clone, "km", gt_field="ground_truth")
    assert {k: full_str[k] for k in ("nmi", "ari", "accuracy", "purity")} == {k: full_cls[k] for k in ("nmi", "ari", "accuracy", "purity")}

    # a view evaluates only its samples
    assert clustering.evaluate_run(clone.take(50, seed=1), "km")["num_evaluated"] == 50
    no_gt = ids[10:17]
    clone.set_values("ground_truth", {i: None for i in no_gt}, key_field="id")
    r = clustering.evaluate_run(clone, "part", gt_field="ground_truth")
    assert r["excluded"] == {"no_cluster_label": 5, "noise": 0, "no_ground_truth": 7}
    assert r["num_evaluated"] == len(clone) - 12
    assert "Evaluated 380 of 392" in r["note"] and "5 without a cluster label" in r["note"]
    keep = [i for i in ids[5:] if i not in set(no_gt)]
    lookup = dict(zip(ids, zip(clone.values("ground_truth.label"), clone.values("part_cluster"))))
    y_true = [lookup[i][0] for i in keep]
    y_pred = [lookup[i][1] for i in keep]
    assert r["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y_true, y_pred))
    with pytest.raises(ValueError, match="Classification field or a string"):
        clustering.evaluate_run(clone, "km", gt_field="km_loss")


def test_evaluate_run_perfect_clustering_scores_one(clone):
    X = one_hot(gt(clone))
    clustering.compute_clusters(clone, "perfect", embeddings=X, reduction="none", method="kmeans", k=K, progress=lambda *a: None)
    r = clustering.evaluate_run(clone, "perfect")
    assert r["nmi"] == pytest.approx(1.0) and r["ari"] == pytest.approx(1.0)
    assert r["accuracy"] == 1.0 and r["purity"] == 1.0
    assert sorted(r["mapping"].values()) == sorted(set(gt(clone)))


def test_evaluate_run_operator_on_a_view_via_execute_operator(ds):
    import fiftyone.operators as foo

    view = ds.take(60, seed=4)
    result = foo.execute_operator(
        f"{PLUGIN_NAME}/evaluate_run",
        {"view": view, "params": {"run_key": "km", "gt_field": "ground_truth", "_sdk_call": True}},
    )
    r = result.result
    assert r["num_evaluated"] == 60 and r["num_samples"] == 60
    y_true, y_pred = view.values(["ground_truth.label", "km_cluster"])
    assert r["ari"] == pytest.approx(skm.adjusted_rand_score(y_true, y_pred))


def test_evaluate_run_in_the_app_shows_table_and_purity_chart(ds):
    outputs, results = shown(app_messages("evaluate_run", ds, {"run_key": "km", "gt_field": "ground_truth"}))
    props = outputs["type"]["properties"]
    assert props["per_cluster"]["view"]["name"] == "TableView"
    assert len(results["per_cluster"]) == K
    bars = results["purity_plot"]["data"][0]
    assert bars["type"] == "bar" and len(bars["y"]) == K and all(0 < v <= 1 for v in bars["y"])
    assert results["contingency"]["data"][0]["type"] == "heatmap"
    assert "NMI" in results["metrics"]


# ---------------------------------------------------------------------------
# compare_runs


def test_compare_runs_finds_exactly_the_moved_samples(clone, plugin_operator):
    ids = clone.values("id")
    y = gt(clone)
    classes = sorted(set(y))
    clustering.compute_clusters(clone, "ref", embeddings=one_hot(y), reduction="none", method="kmeans", k=K, progress=lambda *a: None)
    rng = np.random.default_rng(0)
    moved = sorted(rng.choice(len(ids), 10, replace=False).tolist())
    y2 = y.copy()
    for i in moved:
        y2[i] = classes[(classes.index(y[i]) + 1) % K]
    clustering.compute_clusters(clone, "moved", embeddings=one_hot(y2), reduction="none", method="kmeans", k=K, progress=lambda *a: None)

    r = plugin_operator("compare_runs")(clone, "ref", "moved")
    json.dumps(r)
    assert sorted(r["changed_ids"]) == sorted(ids[i] for i in moved) and r["num_changed"] == 10
    a, b = clone.values("ref_cluster"), clone.values("moved_cluster")
    assert r["ari"] == pytest.approx(skm.adjusted_rand_score(a, b))
    assert r["nmi"] == pytest.approx(skm.normalized_mutual_info_score(a, b))
    assert np.sum(r["contingency"]["counts"]) == r["num_compared"] == len(clone)
    assert r["agreement"] == pytest.approx(1 - 10 / len(clone))
    assert sorted(r["mapping"]) == [str(c) for c in range(K)]

    messages = app_messages("compare_runs", clone, {"run_key_a": "ref", "run_key_b": "moved", "show_changed": True})
    (view,) = triggered(messages, "set_view")
    assert "Select" in json.dumps(view)
    _, results = shown(messages)
    assert np.asarray(results["contingency"]["data"][0]["z"]).tolist() == r["contingency"]["counts"]
    with pytest.raises(ValueError, match="different runs"):
        clustering.compare_runs(clone, "ref", "ref")


def test_compare_runs_on_the_common_samples(ds):
    r = clustering.compare_runs(ds.take(100, seed=2), "km", "km_b")
    assert r["num_compared"] == 100 and r["num_only_a"] == r["num_only_b"] == 0
    mapping, changed = cm.label_agreement(
        np.array(ds.select(r["changed_ids"]).values("km_cluster")), np.array(ds.select(r["changed_ids"]).values("km_b_cluster"))
    )
    assert all(str(a) in r["mapping"] for a in mapping)
    # every reported sample really disagrees under the run-level matching
    a_vals, b_vals = ds.select(r["changed_ids"]).values(["km_cluster", "km_b_cluster"])
    assert all(r["mapping"].get(str(x)) != y for x, y in zip(a_vals, b_vals))


# ---------------------------------------------------------------------------
# silhouette plot


def test_plot_silhouette_exact_equals_sklearn(ds, plugin_operator):
    r = plugin_operator("plot_silhouette")(ds, "km")
    X, labels = pixels(ds), np.array(ds.values("km_cluster"))
    ref = skm.silhouette_samples(X, labels)
    assert r["exact"] and r["num_scored"] == len(ds)
    assert r["silhouette"] == pytest.approx(ref.mean(), abs=1e-5)
    for c in r["clusters"]:
        assert c["mean"] == pytest.approx(ref[labels == c["cluster"]].mean(), abs=1e-5)
        assert c["num_negative"] == int((ref[labels == c["cluster"]] < -1e-6).sum())
        assert len(c["values"]) == c["size"] and c["values"] == sorted(c["values"], reverse=True)
    assert r["below_average"] == [c["cluster"] for c in r["clusters"] if c["mean"] < r["silhouette"]]
    traces = r["figure"]["data"]
    assert len(traces) == K and all(t["fill"] == "tozerox" for t in traces)
    assert r["figure"]["layout"]["shapes"][0]["x0"] == pytest.approx(r["silhouette"])


def test_silhouette_of_a_view_scores_its_points_against_the_whole_run(ds):
    view = ds.take(40, seed=5)
    r = clustering.silhouette_analysis(view, "km")
    X, labels = pixels(ds), np.array(ds.values("km_cluster"))
    ref = dict(zip(ds.values("id"), skm.silhouette_samples(X, labels)))
    view_ids, view_labels = view.values(["id", "km_cluster"])
    assert r["exact"] and r["num_points"] == r["num_scored"] == 40 and r["num_clustered"] == len(ds)
    assert r["silhouette"] == pytest.approx(np.mean([ref[i] for i in view_ids]), abs=1e-5)
    for c in r["clusters"]:
        mine = [ref[i] for i, l in zip(view_ids, view_labels) if l == c["cluster"]]
        assert c["num_points"] == len(mine) and c["mean"] == pytest.approx(np.mean(mine), abs=1e-5)
        assert c["size"] == int((labels == c["cluster"]).sum())


def test_plot_silhouette_sampled_and_in_the_run_feature_space(clone):
    clustering.compute_clusters(clone, "pca", embeddings="pixels", method="kmeans", k=4, normalize=True, reduction="pca", n_components=8, progress=lambda *a: None)
    Xr, _ = cf.prepare_features(pixels(clone), True, "pca", 8, random_state=51)
    labels = np.array(clone.values("pca_cluster"))
    r = clustering.plot_silhouette(clone, "pca")
    assert r["silhouette"] == pytest.approx(skm.silhouette_score(Xr, labels), abs=1e-4)
    assert "PCA to 8 dims" in r["note"]

    s = clustering.silhouette_analysis(clone, "km", sample_size=80)
    assert not s["exact"] and 80 <= s["num_scored"] <= 80 + 20 * K < len(clone)
    ref = skm.silhouette_samples(pixels(clone), clone.values("km_cluster"))
    assert abs(s["silhouette"] - ref.mean()) < 0.05
    for c in s["clusters"]:
        assert c["num_scored"] >= min(20, c["size"])


def test_runs_on_arrays_need_the_array(clone):
    X = pixels(clone)
    clustering.compute_clusters(clone, "arr", embeddings=X, reduction="none", method="kmeans", k=3, progress=lambda *a: None)
    with pytest.raises(ValueError, match="embeddings array passed in Python"):
        clustering.plot_silhouette(clone, "arr")
    with pytest.raises(ValueError, match="embeddings array passed in Python"):
        clustering.visualize_run(clone, "arr", method="pca")
    r = clustering.silhouette_analysis(clone, "arr", embeddings=X)
    assert r["silhouette"] == pytest.approx(skm.silhouette_score(X, clone.values("arr_cluster")), abs=1e-5)


# ---------------------------------------------------------------------------
# 2-d map


def test_visualize_run_pca_is_a_brain_run_with_explained_variance(clone, plugin_operator):
    from sklearn.decomposition import PCA

    r = plugin_operator("visualize_run")(clone, "km", method="pca")
    assert r["brain_key"] == "km_pca" and r["color_by"] == "km_cluster"
    assert "km_pca" in clone.list_brain_runs()
    info = clone.get_brain_info("km_pca")
    assert info.config.embeddings_field == "pixels" and info.config.method == "pca"
    results = clone.load_brain_results("km_pca")
    assert results.points.shape == (len(clone), 2)
    ratio = PCA(n_components=2).fit(pixels(clone)).explained_variance_ratio_
    np.testing.assert_allclose(r["explained_variance_ratio"], ratio, rtol=1e-3)
    assert r["explained_variance_total"] == pytest.approx(ratio.sum(), rel=1e-3)
    assert f"{100 * ratio.sum():.1f}%" in r["how_to"]

    with pytest.raises(ValueError, match="exists"):
        clustering.visualize_run(clone, "km", method="pca")
    messages = app_messages("visualize_run", clone, {"run_key": "km", "method": "pca", "brain_key": "km_pca", "overwrite": True})
    _, shown_results = shown(messages)
    traces = shown_results["preview"]["data"]
    assert len(traces) == K and sum(len(t["x"]) for t in traces) == len(clone)
    assert "explain" in shown_results["how_to"]


def test_visualize_run_tsne_of_the_run_features(clone):
    r = clustering.visualize_run(clone, "km", method="tsne", features="run", brain_key="km_map", max_iters=250, progress=lambda *a: None)
    assert r["num_points"] == len(clone) and r["features"] == "run"
    results = clone.load_brain_results("km_map")
    assert results.points.shape == (len(clone), 2) and np.isfinite(results.points).all()
    assert sorted(results.sample_ids) == sorted(clone.values("id"))


# ---------------------------------------------------------------------------
# summary


def test_run_summary_with_thumbnails_and_metrics(clone, plugin_operator):
    ds = clone
    clustering.set_cluster_name(ds, "km", 1, "bricks & co")
    results = clustering.load_clustering_results(ds, "km")
    r = plugin_operator("run_summary")(ds, "km", gt_field="ground_truth", silhouette=True, num_thumbnails=2)
    json.dumps(r)
    assert [c["name"] for c in r["clusters"]] == [None, "bricks & co", None, None, None]
    paths = dict(zip(*ds.values(["id", "filepath"])))
    assert [c["size"] for c in r["clusters"]] == results.cluster_sizes.tolist()
    for c in r["clusters"]:
        want = results.representatives[str(c["cluster"])][:2]
        assert [rep["id"] for rep in c["representatives"]] == want
        for rep in c["representatives"]:
            assert rep["filepath"] == paths[rep["id"]] and os.path.exists(rep["filepath"])
            assert unquote(rep["url"].split("filepath=", 1)[1]) == rep["filepath"]
        assert 0 < c["purity"] <= 1 and c["silhouette"] is not None
    ev = clustering.evaluate_run(ds, "km")
    assert r["metrics"]["nmi"] == ev["nmi"] and r["metrics"]["accuracy"] == ev["accuracy"]
    assert "load_run_view" in r["galleries"]

    messages = app_messages("run_summary", ds, {"run_key": "km", "num_thumbnails": 2, "show_representatives": True})
    assert triggered(messages, "set_view")
    outputs, results_shown = shown(messages)
    props = outputs["type"]["properties"]
    row = props["cluster_0"]
    assert row["view"]["name"] == "HStackView"
    assert row["type"]["properties"]["rep_0"]["view"]["name"] == "ImageView"
    assert results_shown["cluster_0"]["rep_0"].startswith("/media?filepath=")
    assert "bricks & co" in results_shown["cluster_1"]["title"]
    assert list(results_shown["sizes"]["data"][0]["y"]) == results.cluster_sizes.tolist()


# ---------------------------------------------------------------------------
# App forms


def test_forms_adapt_to_the_choices(clone):
    f = form("choose_k", clone, {})
    assert "pixels" in f["embeddings"]["type"]["values"]
    assert {"squared", "huber", "correntropy"} <= set(f["loss"]["type"]["values"])
    assert "hdbscan" not in f["method"]["type"]["values"]
    assert "loss" not in form("choose_k", clone, {"method": "kmeans"})
    assert "loss_param" in form("choose_k", clone, {"loss": "huber"})
    assert form("choose_k", clone, {"k_min": 5, "k_max": 6})["k_max"]["invalid"]

    f = form("compare_runs", clone, {})
    assert f["run_key_a"]["default"] != f["run_key_b"]["default"]
    assert "ground_truth" in form("evaluate_run", clone, {"run_key": "km"})["gt_field"]["type"]["values"]
    assert "metric" in form("plot_silhouette", clone, {"run_key": "km"})

    f = form("visualize_run", clone, {"run_key": "km", "method": "tsne"})
    assert f["brain_key"]["default"] == "km_tsne" and not f["brain_key"]["invalid"]
    clustering.visualize_run(clone, "km", method="pca", progress=lambda *a: None)
    assert form("visualize_run", clone, {"run_key": "km", "method": "pca"})["brain_key"]["invalid"]
    assert not form("visualize_run", clone, {"run_key": "km", "method": "pca", "overwrite": True})["brain_key"]["invalid"]
    clustering.compute_clusters(clone, "arr", embeddings=pixels(clone), reduction="none", method="kmeans", k=3, progress=lambda *a: None)
    f = form("visualize_run", clone, {"run_key": "arr"})
    assert "no_field" in f and "method" not in f
    assert "show_representatives" in form("run_summary", clone, {"run_key": "km"})
