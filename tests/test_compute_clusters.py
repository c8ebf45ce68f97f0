"""compute_clusters through FiftyOne's operator machinery and the plain function,
on real images, against a real MongoDB."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import clustering
from clustering.runs.model import RunModel
from conftest import REPO_ROOT, form

RUN_FIELDS = ("c_cluster", "c_loss", "c_rep")


def _snapshot(dataset, exclude=()):
    """Every sample's fields (but ``exclude``), as comparable JSON."""
    docs = {}
    for sample in dataset.iter_samples():
        d = sample.to_dict()
        for name in list(d):
            if name in exclude or name in ("last_modified_at",):
                d.pop(name)
        docs[sample.id] = json.dumps(d, sort_keys=True, default=str)
    return docs


def test_operator_stores_labels_losses_representatives_and_run(pixel_dataset, plugin_operator, fo):
    op = plugin_operator("compute_clusters")
    results = op(pixel_dataset, run_key="c", embeddings="pixels", k=5, loss="huber", n_init=2)

    assert "c" in pixel_dataset.list_runs()
    schema = pixel_dataset.get_field_schema()
    assert isinstance(schema["c_cluster"], fo.IntField)
    assert isinstance(schema["c_loss"], fo.FloatField)
    assert isinstance(schema["c_rep"], fo.IntField)

    config = pixel_dataset.get_run_info("c").config
    assert config.method == "generalized_kmeans" and config.loss == "huber"
    assert config.loss_param > 0  # data-driven delta recorded
    assert config.embeddings_field == "pixels" and config.k == 5

    labels, losses, ranks, ids = pixel_dataset.values(["c_cluster", "c_loss", "c_rep", "id"])
    labels, losses = np.array(labels), np.array(losses)
    assert set(labels) == set(range(5)) and len(labels) == len(pixel_dataset)
    assert np.bincount(labels).tolist() == results.cluster_sizes.tolist()
    for c in range(5):
        members = np.flatnonzero(labels == c)
        best = members[np.argmin(losses[members])]
        assert ranks[best] == 1
        assert results.representatives[str(c)][0] == ids[best]
        member_ranks = sorted(r for r in np.array(ranks, dtype=object)[members] if r is not None)
        assert member_ranks == list(range(1, min(5, len(members)) + 1))
    assert np.isclose(results.objective, losses.sum(), rtol=1e-4)


def test_results_load_in_a_new_process(pixel_dataset):
    clustering.compute_clusters(pixel_dataset, "c", embeddings="pixels", reduction="none", k=3, loss="squared")
    pixel_dataset.persistent = True
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import fiftyone as fo\n"
        "ds = fo.load_dataset(%r)\n"
        "r = ds.load_run_results('c')\n"
        "print(type(r).__name__, r.centers.shape, len(r.labels), r.labels.max())\n"
    ) % (REPO_ROOT, pixel_dataset.name)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=180)
    finally:
        pixel_dataset.persistent = False
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ClusteringResults", "(3,", "256)", str(len(pixel_dataset)), "2"]


@pytest.mark.parametrize(
    "method,params",
    [
        ("kmeans", {"k": 4}),
        ("minibatch_kmeans", {"k": 4, "batch_size": 128}),
        ("birch", {"k": 4, "threshold": 0.1}),
        ("agglomerative", {"k": 4, "linkage": "average"}),
        ("hdbscan", {"min_cluster_size": 10}),
    ],
)
def test_scikit_learn_methods(pixel_dataset, plugin_operator, method, params):
    plugin_operator("compute_clusters")(pixel_dataset, run_key="c", embeddings="pixels", reduction="none", method=method, **params)
    labels = np.array(pixel_dataset.values("c_cluster"))
    assert labels.min() >= -1 and len(set(labels) - {-1}) >= 2
    losses = pixel_dataset.values("c_loss")
    for label, loss in zip(labels, losses):
        assert (loss is None) == (label == -1)  # noise has no center, so no loss
    assert pixel_dataset.get_run_info("c").config.method == method


def test_numpy_array_embeddings(pixel_dataset):
    X = np.array(pixel_dataset.values("pixels"))
    results = clustering.compute_clusters(pixel_dataset, "arr", embeddings=X, reduction="none", k=3, loss="absolute")
    assert results.config.source == "array"
    assert len(set(pixel_dataset.values("arr_cluster"))) == 3


def test_view_with_excluded_fields_and_filtered_labels_changes_nothing_else(pixel_dataset, plugin_operator):
    from fiftyone import ViewField as F

    pixel_dataset.set_values("notes", [f"note {i}" for i in range(len(pixel_dataset))])
    before = _snapshot(pixel_dataset)
    view = (
        pixel_dataset.exclude_fields("notes")
        .filter_labels("ground_truth", F("label") != "face", only_matches=False)
        .limit(300)
    )
    plugin_operator("compute_clusters")(view, run_key="c", embeddings="pixels", reduction="none", k=4)
    after = _snapshot(pixel_dataset, exclude=RUN_FIELDS)
    assert after == before
    labelled = pixel_dataset.exists("c_cluster")
    assert len(labelled) == 300
    assert pixel_dataset.get_run_info("c").config.num_clustered == 300


def test_samples_without_embeddings_get_no_label_and_others_do_not_shift(pixel_dataset):
    ids = pixel_dataset.values("id")
    without = ids[::7]
    with_emb = pixel_dataset.exclude(without)
    reference = clustering.compute_clusters(with_emb, "ref", embeddings="pixels", reduction="none", k=4, random_state=3)
    pixel_dataset.select(without).set_field("pixels", None).save()
    clustering.compute_clusters(pixel_dataset, "c", embeddings="pixels", reduction="none", k=4, random_state=3)
    labels = dict(zip(ids, pixel_dataset.values("c_cluster")))
    ref_labels = dict(zip(ids, pixel_dataset.values("ref_cluster")))
    assert all(labels[i] is None for i in without)
    assert all(labels[i] == ref_labels[i] for i in ids if i not in set(without))
    assert pixel_dataset.get_run_info("c").config.num_missing_embeddings == len(without)
    assert reference.config.num_clustered == len(ids) - len(without)


def _assert_nothing_written(dataset, before_fields, run_key="c"):
    assert set(dataset.get_field_schema()) == before_fields
    assert run_key not in dataset.list_runs()


def test_nan_embeddings_are_refused_with_their_count(pixel_dataset):
    ids = pixel_dataset.values("id")
    bad = np.full(256, np.nan, dtype=np.float32)
    pixel_dataset.set_values("pixels", {ids[0]: bad, ids[1]: bad, ids[2]: np.full(256, np.inf, dtype=np.float32)}, key_field="id")
    fields = set(pixel_dataset.get_field_schema())
    with pytest.raises(ValueError, match=r"3 of \d+ rows .* NaN or infinite"):
        clustering.compute_clusters(pixel_dataset, "c", embeddings="pixels", reduction="none", k=3)
    _assert_nothing_written(pixel_dataset, fields)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"k": 0}, "k must be >= 1"),
        ({"k": 100000}, "larger than the"),
        ({"k": 3, "loss": "banana"}, "Unknown loss"),
        ({"k": 3, "loss": "huber", "loss_param": -1.0}, "must be > 0"),
        ({"k": 3, "embeddings": "nope"}, "does not exist"),
        ({"k": 3, "embeddings": "filepath"}, "expected a vector field"),
        ({"k": 3, "method": "spectral"}, "Unknown method"),
        ({"k": 3, "method": "kmeans", "loss": "huber"}, "do not apply"),
        ({"k": 3, "run_key": "1bad"}, "Invalid run key"),
        ({"k": 3, "label_field": "ground_truth"}, "already exists"),
        ({"k": 3, "reduction": "pca", "n_components": 100000}, "n_components"),
        ({"k": "3"}, "needs an integer k"),
        ({"k": 3, "max_iter": 0}, "max_iter must be an integer >= 1"),
        ({"k": 3, "n_init": "many"}, "n_init must be an integer"),
    ],
)
def test_bad_parameters_fail_before_any_write(pixel_dataset, kwargs, message):
    kwargs = dict(kwargs)
    run_key = kwargs.pop("run_key", "c")
    kwargs.setdefault("embeddings", "pixels")
    fields = set(pixel_dataset.get_field_schema())
    with pytest.raises(ValueError, match=message):
        clustering.compute_clusters(pixel_dataset, run_key, **kwargs)
    _assert_nothing_written(pixel_dataset, fields, run_key)


def test_values_too_large_for_float32_distances_are_refused_naming_the_rows(pixel_dataset):
    ids = pixel_dataset.values("id")
    huge = np.zeros(256, dtype=np.float32)
    huge[3] = 1e20
    pixel_dataset.set_values("pixels", {ids[5]: huge}, key_field="id")
    fields = set(pixel_dataset.get_field_schema())
    for kwargs in ({}, {"fit_sample_size": 100, "random_state": 0}):
        with pytest.raises(ValueError, match=r"1 of \d+ rows: embeddings in 'pixels' holds values up to 1e\+20"):
            clustering.compute_clusters(pixel_dataset, "c", embeddings="pixels", reduction="none", k=3, **kwargs)
    _assert_nothing_written(pixel_dataset, fields)


def test_fewer_distinct_vectors_than_k_warn_and_record_the_real_k(pixel_dataset, plugin_operator):
    ids = pixel_dataset.values("id")
    pixel_dataset.set_values("same", {i: np.ones(4, dtype=np.float32) * (n % 2) for n, i in enumerate(ids)}, key_field="id")
    with pytest.warns(UserWarning, match="only 2 of the k=3 clusters could be formed"):
        results = clustering.compute_clusters(pixel_dataset, "c", embeddings="same", reduction="none", k=3)
    assert (results.config.k, results.config.k_requested) == (2, 3)
    assert clustering.get_run_info(pixel_dataset, "c")["summary"]["num_clusters"] == 2
    from operators.clusters import summarize

    _, values = summarize(results)
    assert "Only 2 of the 3 requested clusters could be formed" in values["summary"]


@pytest.mark.parametrize(
    "operator,params,message",
    [
        ("compute_clusters", {"run_key": "q", "embeddings": "pixels", "k": "3"}, "Path: k. Reason: Invalid value type"),
        ("compute_clusters", {"embeddings": "pixels", "k": 3}, "Path: run_key. Reason: Required property"),
        ("clusters_to_labels", {"run_key": "c"}, "Parameter 'label_field' is required"),
        ("merge_clusters", {"run_key": "c", "clusters": ["a"]}, "Parameter 'clusters' must be a list of integers"),
        ("merge_clusters", {"clusters": [0, 1]}, "Parameter 'run_key' is required"),
        ("split_cluster", {"run_key": "c", "cluster": 0, "k": "x"}, "Parameter 'k' must be an integer; got 'x'"),
        ("set_cluster_name", {"run_key": "c", "cluster": "zero", "name": "x"}, "Parameter 'cluster' must be an integer"),
        ("tag_cluster", {"run_key": "c", "cluster": 0, "tags": 5}, "Parameter 'tags' must be a list of strings"),
        ("choose_k", {"embeddings": "pixels", "k_min": "2"}, "Path: k_min. Reason: Invalid value type"),
    ],
)
def test_operators_name_a_bad_or_missing_parameter(pixel_dataset, plugin_operator, operator, params, message):
    import fiftyone.operators as foo

    clustering.compute_clusters(pixel_dataset, "c", embeddings="pixels", reduction="none", k=3)
    with pytest.raises(Exception, match=message) as raised:
        foo.execute_operator(f"@imgclust/clustering/{operator}", dict(dataset=pixel_dataset), params=params)
    assert not isinstance(raised.value, (TypeError, KeyError))


def test_mismatched_dimensions_are_refused(pixel_dataset):
    ids = pixel_dataset.values("id")
    pixel_dataset.set_values("pixels", {ids[0]: np.zeros(10, dtype=np.float32)}, key_field="id")
    with pytest.raises(ValueError, match="mismatched dimensions"):
        clustering.compute_clusters(pixel_dataset, "c", embeddings="pixels", reduction="none", k=3)


def test_existing_key_needs_overwrite(pixel_dataset, plugin_operator):
    op = plugin_operator("compute_clusters")
    op(pixel_dataset, run_key="c", embeddings="pixels", k=3)
    with pytest.raises(Exception, match="Run 'c' exists"):
        op(pixel_dataset, run_key="c", embeddings="pixels", k=4)
    op(pixel_dataset, run_key="c", embeddings="pixels", k=4, overwrite=True)
    assert len(set(pixel_dataset.values("c_cluster"))) == 4


def _update_then_fail(monkeypatch, error):
    """Makes the bulk writer apply half of its first update command, then fail."""
    from clustering.runs import storage

    original = storage._update

    def update(collection, statements):
        original(collection, statements[: len(statements) // 2])
        raise error

    monkeypatch.setattr(storage, "_update", update)


def test_failed_write_leaves_no_fields_or_run(pixel_dataset, monkeypatch):
    fields = set(pixel_dataset.get_field_schema())
    _update_then_fail(monkeypatch, RuntimeError("disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        clustering.compute_clusters(pixel_dataset, "c", embeddings="pixels", reduction="none", k=3)
    _assert_nothing_written(pixel_dataset, fields)


def test_run_management_operators(pixel_dataset, plugin_operator):
    plugin_operator("compute_clusters")(pixel_dataset, run_key="c", embeddings="pixels", reduction="none", k=3, num_representatives=2)

    info = plugin_operator("get_run_info")(pixel_dataset, run_key="c")
    assert info["config"]["k"] == 3 and info["summary"]["num_clusters"] == 3

    reps = clustering.load_run_view(pixel_dataset, "c", representatives=True)
    assert len(reps) == 6 and reps.values("c_rep") == [1, 2] * 3
    cluster0 = clustering.load_run_view(pixel_dataset, "c", cluster=0)
    losses = cluster0.values("c_loss")
    assert losses == sorted(losses) and set(cluster0.values("c_cluster")) == {0}
    outliers = clustering.load_run_view(pixel_dataset, "c", outliers=5)
    assert outliers.values("c_loss") == sorted(pixel_dataset.values("c_loss"), reverse=True)[:5]
    assert plugin_operator("load_run_view")(pixel_dataset, run_key="c", mode="representatives")["num_samples"] == 6

    labels = pixel_dataset.values("c_cluster")
    plugin_operator("rename_run")(pixel_dataset, run_key="c", new_run_key="d")
    assert pixel_dataset.list_runs() == ["d"]
    assert not pixel_dataset.has_field("c_cluster") and pixel_dataset.values("d_cluster") == labels
    assert clustering.load_clustering_results(pixel_dataset, "d").config.label_field == "d_cluster"

    plugin_operator("delete_run")(pixel_dataset, run_key="d")
    assert pixel_dataset.list_runs() == []
    assert not any(pixel_dataset.has_field(f) for f in ("d_cluster", "d_loss", "d_rep"))


def test_pca_and_normalization_are_recorded(pixel_dataset):
    results = clustering.compute_clusters(
        pixel_dataset, "c", embeddings="pixels", k=3, normalize=True, reduction="pca", n_components=10
    )
    config = results.config
    assert config.normalize and config.reduction == "pca" and config.dim == 10
    assert 0 < config.explained_variance_ratio <= 1
    assert results.centers.shape == (3, 10)

    # the stored PCA maps the embeddings (in a new load of the results) to what was clustered
    from sklearn.decomposition import PCA

    from clustering.features.transform import FeatureTransform

    stored = pixel_dataset.load_run_results("c", cache=False)
    assert stored.pca_components.shape == (10, 256) and stored.pca_mean.shape == (256,)
    X = np.stack(pixel_dataset.values("pixels"))
    mapped = FeatureTransform.from_state(stored.config, stored.pca_mean, stored.pca_components).transform(X)
    expected = PCA(10, random_state=51).fit_transform(X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12))
    np.testing.assert_allclose(mapped, expected, atol=1e-4)


def test_run_killed_while_writing_is_marked_incomplete_and_deletable(pixel_dataset, monkeypatch, fo):
    """A hard kill cannot run cleanup: the run is then registered as incomplete
    and delete_run removes it with its fields."""
    _update_then_fail(monkeypatch, KeyboardInterrupt())  # stands for a kill: we skip the cleanup below
    monkeypatch.setattr(fo.Dataset, "delete_run", lambda self, key: None)
    with pytest.raises(KeyboardInterrupt):
        clustering.compute_clusters(pixel_dataset, "c", embeddings="pixels", reduction="none", k=3)
    monkeypatch.undo()

    info = clustering.get_run_info(pixel_dataset, "c")
    assert info["status"].startswith("incomplete") and info["summary"] is None
    assert pixel_dataset.has_field("c_cluster")
    clustering.delete_run(pixel_dataset, "c")
    assert "c" not in pixel_dataset.list_runs()
    assert not any(pixel_dataset.has_field(f) for f in RUN_FIELDS)


@pytest.fixture
def list_dataset(pixel_dataset, fo):
    """The demo dataset with its pixel embeddings stored as plain lists
    (``ListField(FloatField)``), as embeddings imported from JSON are."""
    ids, X = pixel_dataset.values(["id", "pixels"])
    pixel_dataset.set_values("emb", {i: np.asarray(v).tolist() for i, v in zip(ids, X)}, key_field="id")
    assert isinstance(pixel_dataset.get_field("emb"), fo.ListField)
    return pixel_dataset


def test_list_of_numbers_field_works_through_every_operator(list_dataset):
    import fiftyone.operators as foo

    uri = "@imgclust/clustering"
    # the exact call from the issue: no "features" parameter, the field selects the source
    foo.execute_operator(f"{uri}/compute_clusters", dict(dataset=list_dataset),
                         params={"embeddings": "emb", "k": 3, "run_key": "b", "reduction": "none"})
    config = list_dataset.get_run_info("b").config
    assert (config.source, config.embeddings_field, config.num_clustered) == ("field", "emb", len(list_dataset))
    direct = clustering.compute_clusters(list_dataset, "a", embeddings="pixels", reduction="none", k=3, random_state=51)
    assert list_dataset.values("b_cluster") == list_dataset.values("a_cluster")
    assert np.isclose(direct.objective, list_dataset.load_run_results("b").objective, rtol=1e-5)

    get = lambda name: foo.get_operator(f"{uri}/{name}")  # noqa: E731
    sweep = get("choose_k")(list_dataset, embeddings="emb", k_min=2, k_max=4)
    assert [row["k"] for row in sweep["per_k"]] == [2, 3, 4] and sweep["embeddings_field"] == "emb"
    silhouette = get("plot_silhouette")(list_dataset, "b")
    assert silhouette["num_clustered"] == len(list_dataset) and -1 <= silhouette["silhouette"] <= 1
    get("visualize_run")(list_dataset, "b", method="pca", brain_key="b_pca")
    assert "b_pca" in list_dataset.list_brain_runs()


def test_compute_clusters_form_offers_list_fields(list_dataset):
    f = form("compute_clusters", list_dataset, {})
    assert f["features"]["default"] == "field"
    assert {"emb", "pixels"} <= set(f["embeddings"]["type"]["values"])
    f = form("compute_clusters", list_dataset, {"embeddings": "emb"})
    assert f["features"]["default"] == "field" and "model" not in f


def test_defaults_from_the_quality_benchmark(pixel_dataset):
    """bench/README.md, "Defaults from evidence" and "Photo collections": 10
    restarts, raw features reduced by UMAP to 5-d (cosine), shown in the form."""
    f = form("compute_clusters", pixel_dataset, {"embeddings": "pixels"})
    assert f["n_init"]["default"] == 10 and f["normalize"]["default"] is False
    assert f["reduction"]["default"] == "auto" and "n_components" not in f
    assert "UMAP to 5-d" in [c["label"] for c in f["reduction"]["view"]["choices"] if c["value"] == "auto"][0]
    assert form("choose_k", pixel_dataset, {})["n_init"]["default"] == 10
    results = clustering.compute_clusters(pixel_dataset, "d", embeddings="pixels", k=3, loss="correntropy", progress=False)
    config = results.config
    assert (config.n_init, config.normalize, config.reduction, config.dim) == (10, False, "umap", 5)
    assert config.umap_params == {"metric": "cosine", "n_neighbors": 15, "min_dist": 0.0}
    assert config.umap_fit_size == len(pixel_dataset) and config.umap_random_state == 51
    assert sorted(results.umap_fit_ids) == sorted(pixel_dataset.values("id"))
    assert config.loss_param > 0 and config.loss_param_rule.startswith("sigma = median ||x - c||")
    few = clustering.compute_clusters(pixel_dataset.limit(40), "few", embeddings="pixels", k=3, progress=False)
    assert (few.config.reduction, few.config.dim) == ("none", 256)  # too few samples for a UMAP


def test_a_umap_run_reproduces_its_features_in_a_new_process(pixel_dataset, fo):
    """The stored run refits its UMAP (same rows, same seed): the run's own
    samples get their labels back, new samples are mapped by it, and a fit
    on a sample maps the others as the run did."""
    first = pixel_dataset.limit(300)
    clustering.compute_clusters(first, "u", embeddings="pixels", k=4, progress=False)
    pixel_dataset.persistent = True
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import numpy as np, fiftyone as fo, clustering\n"
        "from clustering.runs.model import RunModel\n"
        "ds = fo.load_dataset(%r)\n"
        "r = clustering.load_clustering_results(ds, 'u')\n"
        "m = RunModel.of(r)\n"
        "ids, X = m.features(ds.select(r.sample_ids), list(r.sample_ids))\n"
        "labels, losses = m.assign(X)\n"
        "print(int((labels == np.asarray(r.labels)).sum()), float(np.abs(losses - r.sample_losses).max()))\n"
        "print(clustering.assign_new_samples(ds, 'u'))\n"
    ) % (REPO_ROOT, pixel_dataset.name)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=300)
    finally:
        pixel_dataset.persistent = False
    assert out.returncode == 0, out.stderr[-3000:]
    same, worst = out.stdout.split()[:2]
    assert int(same) == 300 and float(worst) < 1e-4
    assert out.stdout.split()[2] == str(len(pixel_dataset) - 300)
    assert clustering.check_run(pixel_dataset, "u")["state"] == "consistent"


def test_a_umap_fitted_on_a_sample_maps_the_rest_as_the_run_did(pixel_dataset):
    results = clustering.compute_clusters(pixel_dataset, "s", embeddings="pixels", k=4, umap_fit_size=120, progress=False)
    assert results.config.umap_fit_size == 120 and len(results.umap_fit_ids) == 120
    model = RunModel.of(results)
    _, X = model.features(pixel_dataset, list(results.sample_ids))
    labels, _ = model.assign(X)
    assert (labels == np.asarray(results.labels)).all()


@pytest.mark.parametrize("progress", [False, True, None])
def test_progress_follows_fiftyone_convention(pixel_dataset, progress, capsys):
    clustering.compute_clusters(pixel_dataset, "p", embeddings="pixels", reduction="none", k=2, n_init=1, progress=progress)
    err = capsys.readouterr().err
    assert ("100%" in err) == (progress is not False), err[-300:]


def test_progress_callable_and_bad_value(pixel_dataset):
    seen = []
    clustering.compute_clusters(pixel_dataset, "p", embeddings="pixels", reduction="none", k=2, n_init=1,
                                progress=lambda f, m="": seen.append(f))
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(ValueError, match="progress must be None, True, False or a callable"):
        clustering.compute_clusters(pixel_dataset, "q", embeddings="pixels", reduction="none", k=2, progress="yes")
    assert "q" not in pixel_dataset.list_runs()


def _nearest(X, centers):
    """Direct assignment: index and squared distance of each row's nearest center."""
    d2 = ((X[:, None, :].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(-1)
    return d2.argmin(1), d2.min(1)


def test_fit_on_a_sample_with_a_tiny_memory_budget_assigns_every_sample(pixel_dataset, plugin_operator, monkeypatch):
    from clustering import resources

    monkeypatch.setattr(resources, "available_memory", lambda: 100_000)  # room for a few hundred vectors
    seen = []
    results = clustering.compute_clusters(
        pixel_dataset, "s", embeddings="pixels", reduction="none", k=4, n_init=1, random_state=0,
        progress=lambda f, m: seen.append(m),
    )
    config = results.config
    n = len(pixel_dataset)
    assert config.streamed and config.fit_sample_size == "auto" and 4 * 50 <= config.num_fit < n
    assert config.num_clustered == n and config.fit_objective > 0
    assert any(m.startswith("assigning") for m in seen) and f"writing {n}/{n}" in seen

    X = np.stack(pixel_dataset.values("pixels"))
    labels, losses, ranks = pixel_dataset.values(["s_cluster", "s_loss", "s_rep"])
    nearest, d2 = _nearest(X, results.centers)
    assert labels == nearest.tolist()
    np.testing.assert_allclose(losses, d2, rtol=1e-4, atol=1e-6)
    assert np.isclose(results.objective, d2.sum(), rtol=1e-5)
    for c in range(4):
        members = np.flatnonzero(nearest == c)
        assert ranks[members[np.argmin(d2[members])]] == 1
    assert results.sample_ids == pixel_dataset.values("id")


def test_fit_sample_size_with_normalization_pca_and_missing_embeddings(pixel_dataset):
    from clustering.features.transform import FeatureTransform

    ids = pixel_dataset.values("id")
    without = set(ids[::9])
    pixel_dataset.select(list(without)).set_field("pixels", None).save()
    view = pixel_dataset.sort_by("filepath", reverse=True)
    results = clustering.compute_clusters(
        view, "p", embeddings="pixels", method="kmeans", k=3, normalize=True, reduction="pca",
        n_components=8, fit_sample_size=120, random_state=1,
    )
    config = results.config
    assert config.streamed and config.fit_sample_size == 120 and config.num_fit <= 120
    assert config.num_missing_embeddings == len(without) and config.num_clustered == len(ids) - len(without)

    view_ids, values, labels = view.values(["id", "pixels", "p_cluster"])
    have = [i for i, v in enumerate(values) if v is not None]
    stored = pixel_dataset.load_run_results("p", cache=False)
    mapped = FeatureTransform.from_state(stored.config, stored.pca_mean, stored.pca_components).transform(
        np.stack([values[i] for i in have])
    )
    assert [labels[i] for i in have] == _nearest(mapped, results.centers)[0].tolist()
    assert all(labels[i] is None for i, v in enumerate(values) if v is None)
    assert results.sample_ids == [view_ids[i] for i in have]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"method": "hdbscan", "fit_sample_size": 100}, "cannot assign samples outside its fit"),
        ({"k": 3, "fit_sample_size": 0}, "fit_sample_size must be 'auto' or an integer >= 1"),
        ({"k": 3, "fit_sample_size": "half"}, "fit_sample_size must be 'auto' or an integer >= 1"),
    ],
)
def test_bad_fit_sample_size_fails_before_any_write(pixel_dataset, kwargs, message):
    fields = set(pixel_dataset.get_field_schema())
    with pytest.raises(ValueError, match=message):
        clustering.compute_clusters(pixel_dataset, "c", embeddings="pixels", reduction="none", **kwargs)
    _assert_nothing_written(pixel_dataset, fields)


def test_form_offers_fit_sample_size_to_methods_that_assign(pixel_dataset, plugin_operator):
    assert "fit_sample_size" in form("compute_clusters", pixel_dataset, {"embeddings": "pixels"})
    assert "fit_sample_size" not in form("compute_clusters", pixel_dataset, {"embeddings": "pixels", "method": "hdbscan"})
    results = plugin_operator("compute_clusters")(
        pixel_dataset, run_key="f", embeddings="pixels", reduction="none", k=3, fit_sample_size=100
    )
    assert results.config.streamed and results.config.num_fit == 100
    assert pixel_dataset.count("f_cluster") == len(pixel_dataset)


@pytest.fixture
def restored_registries():
    """Losses and methods a test registers are removed after it."""
    from clustering.engine import losses, methods

    saved = dict(losses._REGISTRY), dict(losses._ALIASES), dict(methods._METHODS)
    yield
    for registry, before in zip((losses._REGISTRY, losses._ALIASES, methods._METHODS), saved):
        registry.clear()
        registry.update(before)


def test_a_registered_loss_and_method_get_their_forms(pixel_dataset, restored_registries):
    """Forms come from the registries: nothing in operators/ names a loss or a method."""
    import torch

    from clustering.engine.losses import CoordinateLoss, register_loss
    from clustering.engine.methods import ClusteringMethod, MethodParam, _mean_output, register_method

    class TrimmedLoss(CoordinateLoss):
        name = "test_trimmed"
        label = "Trimmed L1 (tau)"
        summary = "L1 capped at tau per coordinate"
        param_name = "tau"

        def rho(self, r, param):
            return torch.clamp(r.abs(), max=param if param is not None else 1.0)

    register_loss(TrimmedLoss)
    props = form("compute_clusters", pixel_dataset, {"embeddings": "pixels", "loss": "test_trimmed"})
    choices = {c["value"]: c for c in props["loss"]["view"]["choices"]}
    assert choices["test_trimmed"]["label"] == "Trimmed L1 (tau)"
    assert choices["test_trimmed"]["description"] == "L1 capped at tau per coordinate"
    assert props["loss_param"]["view"]["label"] == "tau (optional)"
    assert "loss_param" not in form("compute_clusters", pixel_dataset, {"embeddings": "pixels", "loss": "absolute"})

    class FirstDims(ClusteringMethod):
        name = "test_first_dims"
        label = "Cluster by the sign of the first coordinates"
        defaults = {"dims": 2, "shift": 0.5}
        form = (MethodParam("dims", "Coordinates used", "int", minimum=1), MethodParam("shift", "Shift", "float"))

        def fit(self, X, k, params, progress=None):
            codes = (X[:, : params["dims"]] > params["shift"]).astype(int) @ (2 ** np.arange(params["dims"]))
            return _mean_output(X, np.unique(codes, return_inverse=True)[1] % k, params)

    register_method(FirstDims())
    props = form("compute_clusters", pixel_dataset, {"embeddings": "pixels", "method": "test_first_dims"})
    assert props["dims"]["default"] == 2 and props["dims"]["view"]["label"] == "Coordinates used"
    assert props["shift"]["default"] == 0.5 and "loss" not in props
    results = clustering.compute_clusters(pixel_dataset, "c", embeddings="pixels", reduction="none", k=3, method="test_first_dims", dims=3)
    assert results.config.dims == 3 and results.config.method == "test_first_dims"


def test_every_cluster_gets_a_stability_score_and_noise_scores_lowest(fo):
    """Four Gaussian blobs plus a fifth 'cluster' of uniform noise over their
    bounding box: the noise cluster is the least stable."""
    rng = np.random.default_rng(5)
    centers = rng.normal(scale=10.0, size=(4, 8))
    blobs = centers[np.arange(800) % 4] + rng.normal(size=(800, 8))
    noise = rng.uniform(blobs.min(0), blobs.max(0), size=(200, 8))
    X = np.r_[blobs, noise].astype(np.float32)
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=f"/none/{i}.jpg", emb=x, truth="noise" if i >= 800 else str(i % 4)) for i, x in enumerate(X)])
    results = clustering.compute_clusters(dataset, "s", embeddings="emb", k=5, reduction="none", progress=False)
    truth = dict(zip(*dataset.values(["id", "truth"])))
    majority = {}
    for i, c in zip(results.sample_ids, results.labels.tolist()):
        majority.setdefault(c, []).append(truth[i])
    noisiest = max(majority, key=lambda c: majority[c].count("noise") / len(majority[c]))
    scores = {int(c): s for c, s in results.stability.items()}
    assert set(scores) == set(results.cluster_ids()) and all(0 <= s <= 1 for s in scores.values())
    assert min(scores, key=scores.get) == noisiest
    assert 0 < results.stability_score < 1
    assert results.timings["stability_s"] > 0
    info = clustering.get_run_info(dataset, "s")["summary"]
    assert {c["cluster"]: c["stability"] for c in info["clusters"]} == scores
    assert clustering.compute_clusters(dataset, "h", embeddings="emb", method="hdbscan", reduction="none",
                                       progress=False).stability == {}  # "auto": nearest-center methods only
    dataset.delete()


def test_the_form_offers_stability_and_identity_and_the_summary_shows_stability(pixel_dataset, plugin_operator):
    from operators.clusters import summarize

    f = form("compute_clusters", pixel_dataset, {"embeddings": "pixels"})
    assert f["stability"]["default"] is True and "keep_identity" not in f
    assert form("compute_clusters", pixel_dataset, {"embeddings": "pixels", "method": "hdbscan"})["stability"]["default"] is False
    op = plugin_operator("compute_clusters")
    scored = op(pixel_dataset, run_key="s", embeddings="pixels", reduction="none", k=4, n_init=2)
    _, values = summarize(scored)
    assert f"stability {scored.stability_score:.2f} (size-weighted)" in values["summary"]
    assert "| cluster | size | stability | representative |" in values["summary"]
    # overwriting: the form offers to keep identity; both options reach compute_clusters
    f = form("compute_clusters", pixel_dataset, {"embeddings": "pixels", "run_key": "s", "overwrite": True})
    assert f["keep_identity"]["default"] is True
    for c in scored.cluster_ids():
        clustering.set_cluster_name(pixel_dataset, "s", c, f"name {c}")
    kept = op(pixel_dataset, run_key="s", embeddings="pixels", reduction="none", k=4, n_init=2, overwrite=True,
              random_state=7)
    assert sum(bool(n) for n in kept.names.values()) >= 3  # matched clusters keep their names
    assert set(kept.stability) == {str(c) for c in kept.cluster_ids()}
    again = op(pixel_dataset, run_key="s", embeddings="pixels", reduction="none", k=4, n_init=2, overwrite=True,
               stability=False, keep_identity=False)
    assert again.stability == {} and not any((again.names or {}).values())
    _, values = summarize(again)
    assert "stability" not in values["summary"]
