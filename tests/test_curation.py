"""Curating runs (clustering.runs.curation): naming, merging, splitting, assigning
new samples, labels and tags, on real images against a real MongoDB; after
every action the run's fields, results and config are checked against each
other and against centers recomputed here from the features."""

import json

import numpy as np
import pytest

import clustering
from clustering.runs.evaluation import run_features
from conftest import form, pixel_features
from openai_stub_server import OpenAIStub

quiet = lambda *a: None  # noqa: E731
RUN_KWARGS = {
    "sq": dict(k=5, loss="squared", reduction="none"),
    "hub": dict(k=4, loss="huber", n_init=1, reduction="none"),
    "abs": dict(k=4, loss="absolute", n_init=1, reduction="none"),
    "km": dict(k=4, method="kmeans", normalize=True, reduction="pca", n_components=12),
    "hdb": dict(method="hdbscan", min_cluster_size=10, reduction="none"),
}


@pytest.fixture(scope="module")
def curated_base(fo, demo_images_dir):
    """The demo dataset (392 real images) with a ``pixels`` vector field, a
    ``notes`` field and the runs of ``RUN_KWARGS``; built once per module."""
    from clustering.datasets import load_demo_dataset

    dataset = load_demo_dataset("curation-base", images_dir=demo_images_dir, persistent=False, overwrite=True)
    ids, paths = dataset.values(["id", "filepath"])
    dataset.set_values("pixels", dict(zip(ids, list(pixel_features(paths)))), key_field="id")
    dataset.set_values("notes", [f"note {i}" for i in range(len(ids))])
    for key, kwargs in RUN_KWARGS.items():
        clustering.compute_clusters(dataset, key, embeddings="pixels", progress=quiet, **kwargs)
    yield dataset
    dataset.delete()


@pytest.fixture
def ds(curated_base, request):
    """A fresh clone of ``curated_base`` (same sample ids and runs)."""
    dataset = curated_base.clone("curation-" + request.node.name[:50])
    yield dataset
    dataset.delete()


def _snapshot(dataset, exclude=()):
    """Every sample's fields but ``exclude`` (and ``last_modified_at``), as JSON."""
    docs = {}
    for sample in dataset.iter_samples():
        d = sample.to_dict()
        for name in list(d):
            if name in exclude or name == "last_modified_at":
                d.pop(name)
        docs[sample.id] = json.dumps(d, sort_keys=True, default=str)
    return docs


def _run_fields(dataset, key):
    config = dataset.get_run_info(key).config
    return [getattr(config, k) for k in ("label_field", "loss_field", "rep_field", "name_field") if getattr(config, k, None)]


def _state(dataset, key):
    """Everything a run is: its results' arrays, config and field values."""
    results = clustering.load_clustering_results(dataset, key)
    config = dataset.get_run_info(key).config.serialize()
    return json.dumps(
        {"results": results.serialize(), "config": config, "fields": _snapshot(dataset)}, sort_keys=True, default=str
    )


def _check_run(dataset, key, recomputed=(), action=None):
    """Asserts that run ``key``'s fields, results and config agree, and that
    the centers of ``recomputed`` clusters minimize their members' loss."""
    results = clustering.load_clustering_results(dataset, key)
    config = dataset.get_run_info(key).config
    ids = list(results.sample_ids)
    labels = np.asarray(results.labels)
    losses = np.asarray(results.sample_losses, dtype=np.float64)
    live = results.cluster_ids()

    # fields == results, and nothing outside the run is labeled
    stored = dict(zip(*dataset.values(["id", config.label_field])))
    assert {i for i, c in stored.items() if c is not None} == set(ids)
    assert [stored[i] for i in ids] == labels.tolist()
    stored_loss = dict(zip(*dataset.values(["id", config.loss_field])))
    for i, loss in zip(ids, losses):
        assert (stored_loss[i] is None) if np.isnan(loss) else np.isclose(stored_loss[i], loss, rtol=1e-6)

    # sizes, objective, config
    sizes = np.asarray(results.cluster_sizes)
    assert sizes.sum() == (labels >= 0).sum() and len(sizes) == len(results.centers)
    for c in range(len(sizes)):
        assert sizes[c] == (labels == c).sum()
        assert np.isnan(results.centers[c]).all() == (c not in live)
    assert np.isclose(results.objective, np.nansum(losses), rtol=1e-9)
    assert config.num_clustered == len(ids)
    if config.k is not None:
        assert config.k == len(live)

    # representatives: each cluster's smallest losses, in the field as ranks
    n = config.num_representatives
    ranks = dict(zip(*dataset.values(["id", config.rep_field])))
    assert set(results.representatives) == {str(c) for c in live}
    for c in live:
        members = np.flatnonzero(labels == c)
        best = members[np.argsort(losses[members], kind="stable")[:n]]
        assert results.representatives[str(c)] == [ids[i] for i in best]
    expected = {i: r for reps in results.representatives.values() for r, i in enumerate(reps, 1)}
    assert {i: r for i, r in ranks.items() if r is not None} == expected

    # names: results and the name field
    names = results.names or {}
    assert set(names) <= {str(c) for c in live}
    if getattr(config, "name_field", None):
        stored_names = dict(zip(*dataset.values(["id", config.name_field])))
        for i, c in zip(ids, labels.tolist()):
            assert stored_names[i] == names.get(str(c))

    # recomputed centers are the minimizers of their members' summed loss
    run_ids, X, _, _ = run_features(dataset, key)
    assert run_ids == ids
    loss = getattr(config, "loss", None) or "squared"
    for c in recomputed:
        members = labels == c
        center = results.centers[c]
        Xc = X[members].astype(np.float64)
        if loss == "squared":
            assert np.allclose(center, Xc.mean(axis=0), atol=1e-5)
            assert np.allclose(losses[members], ((Xc - center) ** 2).sum(axis=1), rtol=1e-4, atol=1e-5)
        elif loss == "absolute":
            assert np.allclose(center, np.median(Xc, axis=0), atol=1e-6)
            assert np.allclose(losses[members], np.abs(Xc - center).sum(axis=1), rtol=1e-4)
        else:  # a fit started at the center cannot lower the cluster's loss
            refit = clustering.GeneralizedKMeans(1, loss=loss, loss_param=config.loss_param, init=center[None]).fit(X[members])
            assert refit.objective_ >= losses[members].sum() * (1 - 1e-5)
            assert np.allclose(refit.cluster_centers_[0], center, atol=1e-4)
    if action:
        assert results.edits[-1]["action"] == action
    return results


# ---------------------------------------------------------------------------
# merge


@pytest.mark.parametrize("key", ["sq", "abs", "hub"])
def test_merge_recomputes_the_merged_center_and_retires_the_other_ids(ds, key):
    before = clustering.load_clustering_results(ds, key)
    sizes, clusters, objective = before.cluster_sizes.copy(), before.cluster_ids(), before.objective
    reps_kept = {c: before.representatives[str(c)] for c in (0, 2)}
    untouched = {i: loss for i, c, loss in zip(before.sample_ids, before.labels, before.sample_losses) if c in (0, 2)}

    assert clustering.merge_clusters(ds, key, [3, 1]) == 1

    results = _check_run(ds, key, recomputed=[1], action="merge_clusters")
    assert results.cluster_ids() == [c for c in clusters if c != 3]
    assert results.cluster_sizes[1] == sizes[1] + sizes[3] and results.cluster_sizes[3] == 0
    assert {c: results.representatives[str(c)] for c in (0, 2)} == reps_kept
    assert all(results.sample_losses[results.sample_ids.index(i)] == v for i, v in untouched.items())
    assert results.edits[-1]["params"] == {"clusters": [1, 3]}
    assert results.objective != objective


def test_merge_writes_only_the_merged_clusters_samples(ds):
    results = clustering.load_clustering_results(ds, "sq")
    others = [i for i, c in zip(results.sample_ids, results.labels) if c not in (0, 4)]
    before = _snapshot(ds.select(others), exclude=("sq_rep",))
    clustering.merge_clusters(ds, "sq", [0, 4])
    assert _snapshot(ds.select(others), exclude=("sq_rep",)) == before


# ---------------------------------------------------------------------------
# split


@pytest.mark.parametrize("key", ["hub", "km"])
def test_split_reclusters_a_cluster_under_the_runs_method_loss_and_features(ds, key):
    before = clustering.load_clustering_results(ds, key)
    largest = int(np.argmax(before.cluster_sizes))
    members = {i for i, c in zip(before.sample_ids, before.labels) if c == largest}
    k, num_clusters = len(before.centers), len(before.cluster_ids())

    new = clustering.split_cluster(ds, key, largest, k=3)

    assert new == [k, k + 1, k + 2]
    results = _check_run(ds, key, recomputed=new, action="split_cluster")
    assert largest not in results.cluster_ids()
    assert {i for i, c in zip(results.sample_ids, results.labels) if c in new} == members
    assert all(results.cluster_sizes[c] > 0 for c in new)
    assert results.edits[-1]["outcome"]["clusters"] == new
    config = ds.get_run_info(key).config
    assert config.k == num_clusters + 2


def test_merging_hdbscan_clusters_leaves_the_noise_alone(ds):
    before = clustering.load_clustering_results(ds, "hdb")
    noise = [i for i, c in zip(before.sample_ids, before.labels) if c < 0]
    clusters = before.cluster_ids()
    clustering.merge_clusters(ds, "hdb", clusters)
    results = _check_run(ds, "hdb", recomputed=[clusters[0]])
    assert results.cluster_ids() == [clusters[0]]
    assert [i for i, c in zip(results.sample_ids, results.labels) if c < 0] == noise
    assert ds.get_run_info("hdb").config.k is None


def test_ids_are_never_reused_after_merge_and_split(ds):
    clustering.merge_clusters(ds, "sq", [3, 4])
    assert clustering.split_cluster(ds, "sq", 0) == [5, 6]
    assert clustering.merge_clusters(ds, "sq", [5, 6, 1]) == 1
    assert clustering.split_cluster(ds, "sq", 1, k=2) == [7, 8]
    results = _check_run(ds, "sq", recomputed=[7, 8])
    assert results.cluster_ids() == [2, 3, 7, 8]
    assert [e["action"] for e in results.edits] == ["merge_clusters", "split_cluster", "merge_clusters", "split_cluster"]
    # evaluation, summaries and views work on the non-contiguous ids
    ev = clustering.evaluate_run(ds, "sq", gt_field="ground_truth")
    assert sorted(r["cluster"] for r in ev["per_cluster"]) == [2, 3, 7, 8]
    summary = clustering.run_summary(ds, "sq")
    assert [(r["cluster"], r["size"]) for r in summary["clusters"]] == [(c, int(results.cluster_sizes[c])) for c in (2, 3, 7, 8)]
    sil = clustering.silhouette_analysis(ds, "sq")
    assert sorted(r["cluster"] for r in sil["clusters"]) == [2, 3, 7, 8]
    assert len(clustering.load_run_view(ds, "sq", cluster=7)) == results.cluster_sizes[7]


# ---------------------------------------------------------------------------
# names


def test_hand_written_names_are_stored_and_kept_by_the_llm_unless_overwrite(ds):
    assert clustering.set_cluster_name(ds, "km", 2, "  brick   walls ", description="Red bricks.") == {"2": "brick walls"}
    results = _check_run(ds, "km", action="set_cluster_name")
    assert results.descriptions == {"2": "Red bricks."}
    assert results.naming["clusters"]["2"]["provider"] == "hand-written"
    assert ds.get_run_info("km").config.name_field == "km_name"
    assert ds.count_values("km_name") == {"brick walls": int(results.cluster_sizes[2]), None: len(ds) - int(results.cluster_sizes[2])}

    with OpenAIStub() as stub:
        stub.default = lambda c, body: stub.reply("brick walls")
        run = lambda **kw: clustering.label_clusters(ds, "km", base_url=stub.base_url, api_key="sk-test", max_retries=0, progress=quiet, **kw)  # noqa: E731
        summary = run()
        # the hand-written name is kept; the others, named as it, are asked again once (names taken)
        assert sorted(r["cluster"] for r in stub.requests) == [0, 0, 1, 1, 3, 3]
        # LLM names that collide with the hand-written one get suffixes; it does not
        assert summary["names"] == {"0": "brick walls (0)", "1": "brick walls (1)", "2": "brick walls", "3": "brick walls (3)"}
        _check_run(ds, "km")
        stub.default = lambda c, body: stub.reply(f"class {c}")
        summary = run(overwrite=True)
    assert summary["names"]["2"] == "class 2"
    results = _check_run(ds, "km")
    assert results.naming["clusters"]["2"]["provider"] == "openai"


def test_names_follow_merges_and_splits(ds):
    clustering.set_cluster_name(ds, "sq", 1, "one")
    clustering.set_cluster_name(ds, "sq", 3, "three")
    clustering.set_cluster_name(ds, "sq", 0, "zero")
    clustering.merge_clusters(ds, "sq", [1, 3])
    results = _check_run(ds, "sq", recomputed=[1])
    assert results.names == {"0": "zero", "1": "one"}
    clustering.split_cluster(ds, "sq", 0)
    results = _check_run(ds, "sq", recomputed=[5, 6])
    assert results.names == {"1": "one"}
    assert set(ds.distinct("sq_name")) == {"one"}
    # the name field belongs to the run
    clustering.rename_run(ds, "sq", "renamed")
    assert ds.has_field("renamed_name") and not ds.has_field("sq_name")
    clustering.delete_run(ds, "renamed")
    assert not ds.has_field("renamed_name")


# ---------------------------------------------------------------------------
# new samples


def _added_later(ds, key, n=40):
    """Clears run ``key`` from ``n`` samples, as if they were added after it:
    returns them, with the run recomputed on the others."""
    late = ds.values("id")[-n:]
    kwargs = RUN_KWARGS[key]
    clustering.compute_clusters(ds.exclude(late), key, embeddings="pixels", overwrite=True, progress=quiet, **kwargs)
    return late


@pytest.mark.parametrize("key", ["km", "abs"])
def test_assign_new_samples_gives_the_nearest_center_and_changes_no_label(ds, key):
    late = _added_later(ds, key)
    before = clustering.load_clustering_results(ds, key)
    old = dict(zip(before.sample_ids, before.labels.tolist()))
    centers = before.centers.copy()

    assert clustering.assign_new_samples(ds, key) == len(late)

    results = _check_run(ds, key, action="assign_new_samples")
    labels = dict(zip(results.sample_ids, results.labels.tolist()))
    assert all(labels[i] == c for i, c in old.items())
    assert np.array_equal(results.centers, centers)
    # nearest center, from the raw embeddings and the run's stored normalization / PCA
    X = np.array(ds.select(late, ordered=True).values("pixels"), dtype=np.float64)
    if key == "km":
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        X = (X - results.pca_mean) @ results.pca_components.T
        cost = ((X[:, None, :] - results.centers[None]) ** 2).sum(-1)
    else:
        cost = np.abs(X[:, None, :] - results.centers[None]).sum(-1)
    assert [labels[i] for i in late] == np.argmin(cost, axis=1).tolist()
    losses = dict(zip(results.sample_ids, results.sample_losses))
    assert np.allclose([losses[i] for i in late], cost.min(axis=1), rtol=1e-4)
    assert clustering.assign_new_samples(ds, key) == 0


def test_assign_new_samples_only_from_the_given_view(ds):
    late = _added_later(ds, "sq")
    assert clustering.assign_new_samples(ds.select(late[:10]), "sq") == 10
    results = _check_run(ds, "sq")
    assert len(results.sample_ids) == len(ds) - 30


# ---------------------------------------------------------------------------
# labels and tags


def test_to_labels_writes_classifications_with_loss_ranked_confidence(ds, fo):
    clustering.set_cluster_name(ds, "hdb", 0, "first")
    written = clustering.to_labels(ds, "hdb", "promoted")
    results = _check_run(ds, "hdb", action="to_labels")
    labels = np.asarray(results.labels)
    assert written == (labels >= 0).sum()
    assert isinstance(ds.get_field("promoted"), fo.EmbeddedDocumentField)
    promoted = dict(zip(ds.values("id"), ds.values("promoted")))
    losses = np.asarray(results.sample_losses)
    for c in results.cluster_ids():
        members = np.flatnonzero(labels == c)
        got = [promoted[results.sample_ids[i]] for i in members]
        assert {g.label for g in got} == {"first" if c == 0 else f"cluster_{c}"}
        conf = np.array([g.confidence for g in got])
        order = np.argsort(losses[members])
        assert conf[order][0] == 1.0 and np.all(np.diff(conf[order]) <= 0)  # farther -> less confident
        assert np.isclose(conf.min(), 1 / len(members))
    assert all(promoted[results.sample_ids[i]] is None for i in np.flatnonzero(labels < 0))  # noise

    with pytest.raises(ValueError, match="'promoted' already exists"):
        clustering.to_labels(ds, "hdb", "promoted")
    with pytest.raises(ValueError, match="'notes' has type StringField"):
        clustering.to_labels(ds, "hdb", "notes", overwrite=True)
    with pytest.raises(ValueError, match="'hdb_loss' is a field of run 'hdb'"):
        clustering.to_labels(ds, "hdb", "hdb_loss", overwrite=True)
    clustering.to_labels(ds, "hdb", "promoted", use_names=False, overwrite=True)
    assert "first" not in ds.distinct("promoted.label")
    # the labels are the user's: deleting the run keeps them
    clustering.delete_run(ds, "hdb")
    assert ds.count("promoted") == written


def test_tag_and_untag_a_clusters_samples(ds):
    results = clustering.load_clustering_results(ds, "sq")
    members = [i for i, c in zip(results.sample_ids, results.labels) if c == 2]
    assert clustering.tag_cluster(ds, "sq", 2, ["review", "cluster2"]) == len(members)
    assert set(ds.match_tags("review").values("id")) == set(members)
    assert ds.count_sample_tags() == {"review": len(members), "cluster2": len(members)}
    view = ds.select(members[:5])
    assert clustering.untag_cluster(view, "sq", 2, "review") == 5
    assert ds.count_sample_tags() == {"review": len(members) - 5, "cluster2": len(members)}
    assert [e["action"] for e in _check_run(ds, "sq").edits] == ["tag_cluster", "untag_cluster"]


# ---------------------------------------------------------------------------
# nothing else changes; errors before writing


def test_actions_on_a_view_with_excluded_fields_and_filtered_labels_change_nothing_else(ds):
    from fiftyone import ViewField as F

    late = _added_later(ds, "hub", n=20)
    written = ("sq_cluster", "sq_loss", "sq_rep", "sq_name", "hub_cluster", "hub_loss", "hub_rep", "promoted", "tags")
    before = _snapshot(ds, exclude=written)
    view = ds.exclude_fields("notes").filter_labels("ground_truth", F("label") != "face", only_matches=False)
    clustering.set_cluster_name(view, "sq", 0, "zero")
    clustering.merge_clusters(view, "sq", [1, 2])
    clustering.split_cluster(view, "sq", 3)
    clustering.to_labels(view, "sq", "promoted")
    clustering.tag_cluster(view, "sq", 0, "t")
    assert clustering.assign_new_samples(view, "hub") == len(late)

    assert _snapshot(ds, exclude=written) == before
    results = _check_run(ds, "sq", recomputed=[1, 5, 6])
    assert set(ds.match_tags("t").values("id")) == {i for i, c in zip(results.sample_ids, results.labels) if c == 0}
    assert ds.count("promoted") == len(ds)
    _check_run(ds, "hub")


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda ds: clustering.merge_clusters(ds, "nope", [0, 1]), "No run with key 'nope'"),
        (lambda ds: clustering.merge_clusters(ds, "sq", [0, 9]), "Cluster 9 of run 'sq' does not exist; its clusters are 0, 1, 2, 3, 4"),
        (lambda ds: clustering.merge_clusters(ds, "sq", [2, 2]), "at least two different clusters"),
        (lambda ds: clustering.merge_clusters(ds, "sq", 2), "list of cluster ids"),
        (lambda ds: clustering.merge_clusters(ds, "hdb", [-1, 0]), "Cluster -1 of run 'hdb' is HDBSCAN noise"),
        (lambda ds: clustering.split_cluster(ds, "sq", 1, k=1), "k must be an integer >= 2"),
        (lambda ds: clustering.split_cluster(ds, "sq", 1, k=10_000), "it has \\d+ members"),
        (lambda ds: clustering.split_cluster(ds, "sq", "1"), "must be an integer"),
        (lambda ds: clustering.split_cluster(ds, "hdb", 0), "chooses its own number of clusters"),
        (lambda ds: clustering.assign_new_samples(ds, "hdb"), "density-based"),
        (lambda ds: clustering.set_cluster_name(ds, "sq", 0, " "), "non-empty string"),
        (lambda ds: clustering.set_cluster_name(ds, "sq", 7, "x"), "Cluster 7"),
        (lambda ds: clustering.to_labels(ds, "sq", "bad name"), "Invalid label_field"),
        (lambda ds: clustering.tag_cluster(ds, "sq", 0, []), "tags must be"),
        (lambda ds: clustering.tag_cluster(ds, "sq", 5, "x"), "Cluster 5"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(ds, call, message):
    before = {key: _state(ds, key) for key in ("sq", "hdb")}
    with pytest.raises(ValueError, match=message):
        call(ds)
    assert {key: _state(ds, key) for key in ("sq", "hdb")} == before


def test_runs_whose_features_cannot_be_rebuilt_are_refused(ds):
    X = np.array(ds.values("pixels"))
    clustering.compute_clusters(ds, "arr", embeddings=X, reduction="none", k=3, method="kmeans", progress=quiet)
    before = _state(ds, "arr")
    for call in (
        lambda: clustering.merge_clusters(ds, "arr", [0, 1]),
        lambda: clustering.split_cluster(ds, "arr", 0),
        lambda: clustering.assign_new_samples(ds, "arr"),
    ):
        with pytest.raises(ValueError, match="embeddings array passed in Python"):
            call()
    assert _state(ds, "arr") == before
    # a run with samples whose embeddings are gone since
    results = clustering.load_clustering_results(ds, "sq")
    gone = [i for i, c in zip(results.sample_ids, results.labels) if c == 0][:3]
    ds.select(gone).set_field("pixels", None).save()
    with pytest.raises(ValueError, match="3 samples of run 'sq' no longer exist or have no embeddings in 'pixels'"):
        clustering.merge_clusters(ds, "sq", [0, 1])
    clustering.merge_clusters(ds, "sq", [1, 2])  # clusters with their embeddings still merge


# ---------------------------------------------------------------------------
# runs over patches


@pytest.fixture
def patch_run(fo, demo_images_dir, request):
    """60 demo images with two detections each (left / right half), whose
    label-level ``vec`` holds that half's pixels; run ``pc`` clusters the
    patches of 50 images (kmeans, k=3)."""
    import os

    from PIL import Image

    name = "curation-patches-" + request.node.name[:40]
    paths = sorted(os.path.join(demo_images_dir, f) for f in os.listdir(demo_images_dir))[::6][:60]
    dataset = fo.Dataset(name)
    samples = []
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("L").resize((16, 16)), dtype=np.float32) / 255.0
        halves = [pixels[:, :8].ravel().tolist(), pixels[:, 8:].ravel().tolist()]
        boxes = [[0, 0, 0.5, 1], [0.5, 0, 0.5, 1]]
        dets = [fo.Detection(label=side, bounding_box=b, vec=v) for side, b, v in zip(("left", "right"), boxes, halves)]
        samples.append(fo.Sample(filepath=path, gt=fo.Detections(detections=dets), note=os.path.basename(path)))
    dataset.add_samples(samples)
    dataset.add_sample_field("gt.detections.vec", fo.ListField, subfield=fo.FloatField)
    late = dataset.values("id")[50:]
    clustering.compute_clusters(dataset.exclude(late).to_patches("gt"), "pc", embeddings="gt.vec", reduction="none", method="kmeans", k=3, progress=quiet)
    yield dataset
    dataset.delete()


def test_patch_runs_merge_split_and_assign_on_the_labels(patch_run):
    ds = patch_run

    def label_values(attr):
        return {i: v for ids, vs in zip(*ds.values(["gt.detections.id", f"gt.detections.pc_{attr}"])) for i, v in zip(ids, vs)}

    num_before = len(clustering.load_clustering_results(ds, "pc").sample_ids)
    clustering.merge_clusters(ds, "pc", [0, 2])
    new = clustering.split_cluster(ds, "pc", 1, k=2)
    assert new == [3, 4]
    assert clustering.assign_new_samples(ds.to_patches("gt"), "pc") == 20
    results = clustering.load_clustering_results(ds, "pc")
    assert results.cluster_ids() == [0, 3, 4]
    stored = label_values("cluster")
    assert {i: stored[i] for i in results.sample_ids} == dict(zip(results.sample_ids, results.labels.tolist()))
    assert len(stored) == len(results.sample_ids) == num_before + 20
    ranks = {i: r for i, r in label_values("rep").items() if r is not None}
    assert ranks == {i: r for reps in results.representatives.values() for r, i in enumerate(reps, 1)}
    assert np.isclose(results.objective, np.nansum(results.sample_losses))
    for call, what in (
        (lambda: clustering.to_labels(ds, "pc", "promoted"), "to_labels"),
        (lambda: clustering.tag_cluster(ds, "pc", 0, "x"), "tag_cluster"),
        (lambda: clustering.set_cluster_name(ds, "pc", 0, "x"), "set_cluster_name"),
        (lambda: clustering.assign_new_samples(ds, "pc"), "a patches view of 'gt'"),
    ):
        with pytest.raises(ValueError, match=what):
            call()


# ---------------------------------------------------------------------------
# operators


def test_operators_through_fiftyone(ds, plugin_operator):
    op = plugin_operator
    assert op("set_cluster_name")(ds, run_key="sq", cluster=0, name="zero", description="d")["names"] == {"0": "zero"}
    assert op("merge_clusters")(ds, run_key="sq", clusters=[3, 1])["cluster"] == 1
    assert op("split_cluster")(ds, run_key="sq", cluster=0, k=2)["clusters"] == [5, 6]
    # the form's dropdowns give ids as strings, a panel as ints
    assert op("tag_cluster")(ds, run_key="sq", cluster="1", tags=["a"])["num_samples"] == ds.count_sample_tags()["a"]
    assert op("tag_cluster")(ds, run_key="sq", cluster=1, tags=["a"], untag=True)["num_samples"] > 0
    assert ds.count_sample_tags() == {}
    out = op("clusters_to_labels")(ds, run_key="sq", label_field="promoted", use_names=False)
    assert out["num_labels"] == len(ds) == ds.count("promoted")
    with pytest.raises(Exception, match="Field .promoted. exists"):
        op("clusters_to_labels")(ds, run_key="sq", label_field="promoted")
    late = _added_later(ds, "hub", n=15)
    assert op("assign_new_samples")(ds, run_key="hub")["num_assigned"] == len(late)
    _check_run(ds, "sq", recomputed=[1, 5, 6])
    _check_run(ds, "hub")


def test_operator_forms(ds):
    props = form("merge_clusters", ds, {"run_key": "sq"})
    assert props["clusters"]["type"]["name"] == "List"
    props = form("split_cluster", ds, {"run_key": "sq", "cluster": "2"})
    choices = props["cluster"]["view"]["choices"]
    sizes = clustering.load_clustering_results(ds, "sq").cluster_sizes
    assert [c["value"] for c in choices] == ["0", "1", "2", "3", "4"]
    assert f"{sizes[2]} samples" in choices[2]["label"]
    assert props["k"]["type"]["max"] == sizes[2]
    clustering.set_cluster_name(ds, "sq", 1, "ones")
    props = form("set_cluster_name", ds, {"run_key": "sq", "cluster": "1"})
    assert "ones" in props["cluster"]["view"]["choices"][1]["label"]
    assert props["name"]["default"] == "ones"
    props = form("clusters_to_labels", ds, {"run_key": "sq", "label_field": "notes"})
    assert props["label_field"].get("invalid")
    for name in ("assign_new_samples", "tag_cluster"):
        assert "run_key" in form(name, ds, {"run_key": "sq"})
