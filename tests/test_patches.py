"""Patch embeddings (clustering.features.patches): object crops of a Detections field
embedded with the offline EfficientNet-Lite0 on real images, stored on the
labels, and clustered through a patches view."""

import math
import os

import numpy as np
import pytest

MODEL = "efficientnet-lite0"
URI = "@imgclust/clustering/compute_embeddings"
LEFT, RIGHT = [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 0.5, 1.0]
DEGENERATE = {
    "outside": [1.1, 0.0, 0.2, 0.2],
    "flat": [0.2, 0.2, 0.0, 0.5],
    "negative": [0.1, 0.1, -0.2, 0.3],
    "nan": [math.nan, 0.1, 0.2, 0.2],
}
quiet = lambda *a: None  # noqa: E731


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def composites(demo_images_dir, tmp_path_factory):
    """Real two-panel images: a face on the left, a texture on the right.

    Returns ``{name: path}``: ``pair-0..7`` (192x96 PNG), ``twin`` (the same
    face twice) and ``big`` (2400x1200 JPEG, decoded at reduced DCT scale).
    """
    from PIL import Image

    root = tmp_path_factory.mktemp("composites")
    names = sorted(os.listdir(demo_images_dir))
    faces = [n for n in names if n.startswith("face-")]
    textures = [n for kind in ("brick", "grass", "gravel") for n in names if n.startswith(kind)][::7]

    def panel(left, right):
        image = Image.new("RGB", (192, 96))
        for x, name in ((0, left), (96, right)):
            image.paste(Image.open(os.path.join(demo_images_dir, name)).convert("RGB").resize((96, 96), Image.BICUBIC), (x, 0))
        return image

    paths = {}
    for i in range(8):
        paths[f"pair-{i}"] = str(root / f"pair-{i}.png")
        panel(faces[i], textures[i * 3]).save(paths[f"pair-{i}"])
    paths["twin"] = str(root / "twin.png")
    panel(faces[10], faces[10]).save(paths["twin"])
    paths["big"] = str(root / "big.jpg")
    panel(textures[1], faces[11]).resize((2400, 1200), Image.BICUBIC).save(paths["big"], quality=95)
    return paths


def _detections(fo, boxes):
    return fo.Detections(detections=[fo.Detection(label=k, bounding_box=b) for k, b in boxes.items()])


@pytest.fixture
def patches_dataset(fo, composites, request):
    """One sample per composite with ``gt`` (left/right boxes; ``pair-0`` also
    has a partly outside box and degenerate ones), plus other fields."""
    name = "test-" + request.node.name[:60]
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    samples = []
    for key, path in composites.items():
        boxes = {"left": LEFT, "right": RIGHT}
        if key == "pair-0":
            boxes.update({"clipped": [-0.25, 0.0, 0.75, 1.0], **DEGENERATE})
        samples.append(
            fo.Sample(
                filepath=path,
                gt=_detections(fo, boxes),
                kind=fo.Classification(label="twin" if key == "twin" else "pair"),
                note=key,
            )
        )
    dataset.add_samples(samples)
    yield dataset
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def _label_vectors(dataset, attr="emb"):
    """``{(filepath basename, label): vector or None}``."""
    out = {}
    for path, labels, vectors in zip(*dataset.values(["filepath", "gt.detections.label", f"gt.detections.{attr}"])):
        for label, v in zip(labels, vectors):
            out[(os.path.basename(path), label)] = v
    return out


def _crop_files(tmp_path, path, boxes):
    """Crops pixel boxes ``(x1, y1, x2, y2)`` of ``path`` with PIL and saves them as PNGs."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    files = []
    for j, box in enumerate(boxes):
        files.append(str(tmp_path / f"{os.path.basename(path)}-{j}.png"))
        image.crop(box).save(files[-1])
    return files


def _cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def _snapshot(dataset, attr):
    """Every sample as a dict, minus ``attr`` on the ``gt`` labels."""
    rows = {}
    for sample in dataset.iter_samples():
        d = sample.to_dict()
        d.pop("last_modified_at", None)
        for det in d["gt"]["detections"]:
            det.pop(attr, None)
        rows[sample.id] = d
    return rows


# --------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------


def test_boxes_are_clipped_padded_and_squared_like_fiftyone():
    """Pixel crops match FiftyOne's own extract_patch (clipping by alpha=0,
    padding, force_square) on random boxes; degenerate boxes are rejected."""
    import fiftyone as fo
    import fiftyone.utils.patches as foup

    from clustering.features.patches import pixel_box, relative_box

    rng = np.random.default_rng(0)
    img = np.arange(90 * 150, dtype=np.int64).reshape(90, 150)
    for _ in range(400):
        x, y = rng.uniform(-0.2, 0.9, 2)
        w, h = rng.uniform(0.05, 0.6, 2)
        alpha = float(rng.choice([0.0, 0.3, -0.4]))
        square = bool(rng.integers(2))
        expected = foup.extract_patch(img, fo.Detection(bounding_box=[x, y, w, h]), force_square=square, alpha=alpha)
        rel = relative_box([x, y, w, h], alpha)
        assert (rel is None) == (x >= 1 or y >= 1 or x + w <= 0 or y + h <= 0)
        if rel is None:  # no area in the image (FiftyOne may square an empty crop)
            continue
        if expected.size == 0:  # FiftyOne truncates a sub-pixel box to nothing; we keep a pixel
            assert min((rel[2] - rel[0]) * 150, (rel[3] - rel[1]) * 90) < 1
            continue
        x1, y1, x2, y2 = pixel_box(rel, 150, 90, square)
        np.testing.assert_array_equal(img[y1:y2, x1:x2], expected, err_msg=str((x, y, w, h, alpha, square)))
    for box in [*DEGENERATE.values(), None, [0.1, 0.2], ["a", 0, 1, 1]]:
        assert relative_box(box) is None
    assert pixel_box((0.0, 0.0, 1e-6, 1e-6), 150, 90) == (0, 0, 1, 1)  # tiny boxes keep a pixel


# --------------------------------------------------------------------------
# SDK
# --------------------------------------------------------------------------


def test_patch_vectors_equal_embeddings_of_the_cropped_images(patches_dataset, composites, tmp_path):
    import clustering
    import clustering.features.backbones as bb

    ds = patches_dataset
    summary = clustering.compute_embeddings(ds, MODEL, "emb", patches_field="gt", batch_size=3, progress=quiet)
    n = len(composites)
    assert summary["field"] == "gt.detections.emb" and summary["dim"] == 1280
    assert summary["num_patches"] == 2 * n + 1 + len(DEGENERATE)
    assert summary["num_embedded"] == 2 * n + 1
    assert summary["num_degenerate"] == len(DEGENERATE) and summary["num_failed"] == 0
    assert type(ds.get_field("gt.detections.emb")).__name__ == "VectorField"
    assert ds.get_field("gt.detections.emb").info["model"] == MODEL

    vec = _label_vectors(ds)
    for key, v in vec.items():
        if key[1] in DEGENERATE:
            assert v is None, key
        else:
            assert v.shape == (1280,) and np.isfinite(v).all(), key

    # identical content -> identical vectors; the partly outside box is clipped
    np.testing.assert_allclose(vec["twin.png", "left"], vec["twin.png", "right"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vec["pair-0.png", "clipped"], vec["pair-0.png", "left"], rtol=1e-5, atol=1e-5)
    assert _cos(vec["pair-0.png", "left"], vec["pair-0.png", "right"]) < 0.9  # the two panels differ

    # each vector is the embedding of the image cropped by hand (PNG: exact pixels)
    files, keys = [], []
    for i in range(8):
        files += _crop_files(tmp_path, composites[f"pair-{i}"], [(0, 0, 96, 96), (96, 0, 192, 96)])
        keys += [(f"pair-{i}.png", "left"), (f"pair-{i}.png", "right")]
    X, failed = bb.embed_files(files, MODEL, batch_size=4, num_workers=0, device="cpu")
    assert not failed
    for key, x in zip(keys, X):
        np.testing.assert_allclose(vec[key], x, rtol=1e-3, atol=1e-3, err_msg=str(key))

    # a large JPEG (decoded at 1/2 DCT scale) still matches its full-size crops
    crops = _crop_files(tmp_path, composites["big"], [(0, 0, 1200, 1200), (1200, 0, 2400, 1200)])
    X, _ = bb.embed_files(crops, MODEL, num_workers=0, device="cpu")
    assert _cos(vec["big.jpg", "left"], X[0]) > 0.98 and _cos(vec["big.jpg", "right"], X[1]) > 0.98
    assert _cos(vec["big.jpg", "left"], X[1]) < 0.9


def test_padding_and_square_crops(patches_dataset, tmp_path, fo):
    """alpha grows a centred box to the whole image; force_square turns a
    quarter-width strip into the left panel."""
    import clustering
    import clustering.features.backbones as bb

    ds = patches_dataset.limit(2)
    ds.set_values("gt", [_detections(fo, {"centre": [0.25, 0.25, 0.5, 0.5], "strip": [0.0, 0.0, 0.25, 1.0]})] * 2)
    clustering.compute_embeddings(ds, MODEL, "pad", patches_field="gt", alpha=1.0, progress=quiet)
    clustering.compute_embeddings(ds, MODEL, "sq", patches_field="gt", force_square=True, progress=quiet)
    whole, _ = bb.embed_files(ds.values("filepath"), MODEL, num_workers=0, device="cpu")
    left, _ = bb.embed_files(
        [_crop_files(tmp_path, p, [(0, 0, 96, 96)])[0] for p in ds.values("filepath")], MODEL, num_workers=0, device="cpu"
    )
    for i, (pad, sq) in enumerate(zip(ds.values("gt.detections.pad"), ds.values("gt.detections.sq"))):
        np.testing.assert_allclose(pad[0], whole[i], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(sq[1], left[i], rtol=1e-3, atol=1e-3)
        assert _cos(sq[0], pad[0]) < 0.99  # square-only crop of the centre is not the whole image


def test_unreadable_images_are_skipped_counted_and_cleared(patches_dataset, tmp_path, fo):
    import clustering

    ds = patches_dataset
    corrupt = str(tmp_path / "corrupt.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not a jpeg" * 20)
    ds.add_samples(
        [
            fo.Sample(filepath=corrupt, gt=_detections(fo, {"left": LEFT, "right": RIGHT})),
            fo.Sample(filepath=str(tmp_path / "missing.png"), gt=_detections(fo, {"left": LEFT})),
        ]
    )
    bad = ds.match({"filepath": {"$in": [corrupt, str(tmp_path / "missing.png")]}})
    bad_ids = set(bad.values("id"))
    # stale vectors on the unreadable images' labels are cleared
    ds.set_label_values("gt.detections.emb", {lid: np.ones(1280) for lid in bad.values("gt.detections.id", unwind=True)})

    summary = clustering.compute_embeddings(ds, MODEL, "emb", patches_field="gt", batch_size=4, progress=quiet)
    assert summary["num_failed_images"] == 2 and summary["num_failed"] == 3
    assert set(summary["failed_ids"]) == bad_ids == set(summary["errors"])
    assert any("FileNotFoundError" in e for e in summary["errors"].values())
    assert summary["num_embedded"] == 2 * (len(ds) - 2) + 1
    assert all(v is None for vs in bad.values("gt.detections.emb") for v in vs)

    with pytest.raises(RuntimeError, match="Could not embed the patches of sample"):
        clustering.compute_embeddings(ds, MODEL, "emb2", patches_field="gt", skip_failures=False, progress=quiet)


def test_only_missing_labels_are_embedded_and_models_are_not_mixed(patches_dataset, tiny_model):
    import clustering

    ds = patches_dataset
    from fiftyone import ViewField as F

    lefts = ds.filter_labels("gt", F("label") == "left")
    s = clustering.compute_embeddings(lefts, MODEL, "emb", patches_field="gt", progress=quiet)
    assert s["num_embedded"] == len(ds)
    kept = _label_vectors(ds)

    s = clustering.compute_embeddings(ds, MODEL, "emb", patches_field="gt", overwrite=False, progress=quiet)
    assert s["num_skipped"] == len(ds) and s["num_embedded"] == len(ds) + 1  # rights + clipped
    after = _label_vectors(ds)
    for key, v in kept.items():
        if v is not None:
            np.testing.assert_array_equal(after[key], v)
    assert all(after[k] is not None for k in after if k[1] not in DEGENERATE)

    with pytest.raises(ValueError, match="mix models"):
        clustering.compute_embeddings(lefts, tiny_model, "emb", patches_field="gt", progress=quiet)
    s = clustering.compute_embeddings(lefts, tiny_model, "tiny", patches_field="gt", progress=quiet)
    assert s["dim"] == 3 and {v.shape for v in ds.values("gt.detections.tiny", unwind=True) if v is not None} == {(3,)}


def test_invalid_arguments_name_the_problem(patches_dataset):
    import clustering

    ds = patches_dataset
    with pytest.raises(ValueError, match="'kind' has type EmbeddedDocumentField\\(Classification\\).*Detections fields: gt"):
        clustering.compute_embeddings(ds, MODEL, "emb", patches_field="kind")
    with pytest.raises(ValueError, match="'nope' does not exist; Detections fields: gt"):
        clustering.compute_embeddings(ds, MODEL, "emb", patches_field="nope")
    with pytest.raises(ValueError, match="Unknown model 'nope'.*efficientnet-lite0"):
        clustering.compute_embeddings(ds, "nope", "emb", patches_field="gt")
    with pytest.raises(ValueError, match="StringField"):
        clustering.compute_embeddings(ds, MODEL, "label", patches_field="gt")
    with pytest.raises(ValueError, match="alpha must be > -1"):
        clustering.compute_embeddings(ds, MODEL, "emb", patches_field="gt", alpha=-1)
    with pytest.raises(ValueError, match="pass patches_field"):
        clustering.compute_embeddings(ds, MODEL, "emb", force_square=True)
    with pytest.raises(ValueError, match="patches_field"):
        clustering.compute_embeddings(ds.to_patches("gt"), MODEL, "emb")
    assert "gt.detections.emb" not in ds.get_field_schema(flat=True)


# --------------------------------------------------------------------------
# operator
# --------------------------------------------------------------------------


def test_operator_embeds_a_filtered_view_and_touches_nothing_else(patches_dataset, plugin_operator):
    from fiftyone import ViewField as F

    ds = patches_dataset
    before = _snapshot(ds, "emb")
    view = ds.filter_labels("gt", F("label") == "right").exclude_fields(["note", "kind"]).skip(1).limit(6)
    summary = plugin_operator("compute_embeddings")(
        view, model=MODEL, embeddings_field="emb", patches_field="gt", batch_size=4
    )
    assert summary["num_embedded"] == summary["num_patches"] == 6 and summary["num_degenerate"] == 0
    assert "**6** patches of `gt`" in summary["message"]

    ds.reload()
    assert _snapshot(ds, "emb") == before  # other fields and labels untouched
    embedded = {k for k, v in _label_vectors(ds).items() if v is not None}
    paths = [os.path.basename(p) for p in view.values("filepath")]
    assert embedded == {(p, "right") for p in paths}
    assert ds.count("gt.detections") == 2 * len(ds) + 1 + len(DEGENERATE)


def test_operator_form_offers_detections_fields(patches_dataset):
    import asyncio

    from fiftyone.operators import OperatorRegistry
    from fiftyone.operators.executor import _parse_ctx, resolve_type

    def form(**params):
        prop = asyncio.run(resolve_type(OperatorRegistry(), URI, _parse_ctx(dataset=patches_dataset, params=params)))
        return prop.type.properties

    props = form()
    assert [c.value for c in props["patches_field"].view.choices] == ["(whole images)", "gt"]
    assert "force_square" not in props and "alpha" not in props
    props = form(patches_field="gt", embeddings_field="label")
    assert {"force_square", "alpha"} <= set(props)
    assert props["embeddings_field"].invalid and "gt.detections.label" in props["embeddings_field"].error_message
    assert form(patches_field="gt", alpha=-2)["alpha"].invalid

    ds = patches_dataset
    ds.set_label_values("gt.detections.emb", {ds.first().gt.detections[0].id: np.zeros(4)}, dynamic=True)
    props = form(patches_field="gt", embeddings_field="emb")
    assert not getattr(props["embeddings_field"], "invalid", False)
    assert f"1 of the {ds.count('gt.detections')} target labels" in props["exists_warning"].view.description


# --------------------------------------------------------------------------
# clustering
# --------------------------------------------------------------------------


def test_patch_embeddings_cluster_faces_apart_from_textures(patches_dataset):
    """A patches view clusters on the label-level embeddings: the face crops
    and the texture crops fall in different clusters."""
    import clustering
    from fiftyone import ViewField as F

    ds = patches_dataset
    pairs = ds.match(F("note").starts_with("pair-"))
    clustering.compute_embeddings(pairs, MODEL, "emb", patches_field="gt", progress=quiet)
    patches = pairs.filter_labels("gt", F("label").is_in(["left", "right"])).to_patches("gt")
    results = clustering.compute_clusters(
        patches, "patch_clusters", embeddings="gt.emb", reduction="none", method="kmeans", k=2, normalize=True,
        random_state=0, progress=quiet,
    )
    ids, sides = patches.values(["id", "gt.label"])
    assert list(results.sample_ids) == ids and len(ids) == 16
    by_id = dict(zip(results.sample_ids, np.asarray(results.labels)))
    left = {by_id[i] for i, s in zip(ids, sides) if s == "left"}
    right = {by_id[i] for i, s in zip(ids, sides) if s == "right"}
    assert len(left) == 1 and len(right) == 1 and left != right


def test_a_patches_run_fitted_on_a_sample_assigns_every_label(patches_dataset):
    """The beyond-RAM mode on patches: fit on a few labels, every label of the
    view assigned (on the label, by label id) to its nearest center."""
    import clustering
    from fiftyone import ViewField as F

    ds = patches_dataset
    clustering.compute_embeddings(ds, MODEL, "emb", patches_field="gt", progress=quiet)
    patches = ds.filter_labels("gt", F("label").is_in(["left", "right"])).to_patches("gt")
    results = clustering.compute_clusters(
        patches, "s", embeddings="gt.emb", reduction="none", method="kmeans", k=2, fit_sample_size=6, random_state=0, progress=quiet,
    )
    assert results.config.streamed and results.config.num_fit == 6
    ids, X = patches.values(["id", "gt.emb"])
    X = np.stack(X)
    nearest = ((X[:, None] - results.centers[None]) ** 2).sum(-1).argmin(1)
    stored = {i: c for lids, cs in zip(*ds.values(["gt.detections.id", "gt.detections.s_cluster"]))
              for i, c in zip(lids, cs)}
    assert [stored[i] for i in ids] == nearest.tolist()
    assert sum(c is not None for c in stored.values()) == len(ids)  # the filtered-out labels: untouched


def test_evaluation_patches_are_refused_before_any_write(patches_dataset):
    """An evaluation patches view (true/false positives of two fields) has no
    single label field to store a run on: clustering it fails with a message
    that names the fix, and writes nothing."""
    import clustering
    from fiftyone import ViewField as F

    ds = patches_dataset
    ds.clone_sample_field("gt", "pred")
    boxes = ds.filter_labels("gt", F("label").is_in(["left", "right"]))  # no degenerate box
    boxes.evaluate_detections("pred", gt_field="gt", eval_key="ev")
    before = ds.get_field_schema(flat=True)
    eval_patches = ds.to_evaluation_patches("ev")
    assert len(eval_patches) > 0
    with pytest.raises(ValueError, match="Evaluation patches views cannot be clustered; use to_patches"):
        clustering.compute_clusters(eval_patches, "ev_run", embeddings="gt.emb", reduction="none", k=2, progress=quiet)
    assert ds.get_field_schema(flat=True) == before
    assert "ev_run" not in ds.list_runs()


def test_patch_runs_store_on_the_labels_and_are_managed_like_image_runs(patches_dataset, plugin_operator):
    """A run on a patches view writes its cluster / loss / rank on the detections
    (by label id) and nothing else; its view, rename and delete work on those
    label attributes; functions for image runs refuse it by name."""
    import clustering
    from fiftyone import ViewField as F

    ds = patches_dataset
    clustering.compute_embeddings(ds, MODEL, "emb", patches_field="gt", progress=quiet)
    before = _snapshot(ds, "emb")
    patches = ds.filter_labels("gt", F("label").is_in(["left", "right"])).to_patches("gt")
    results = clustering.compute_clusters(
        patches, "pc", embeddings="gt.emb", reduction="none", method="kmeans", k=2, normalize=True,
        random_state=0, num_representatives=2, progress=quiet,
    )
    info = clustering.get_run_info(ds, "pc")["config"]
    assert info["patches_field"] == "gt" and info["label_field"] == "gt.detections.pc_cluster"

    by_label = dict(zip(results.sample_ids, np.asarray(results.labels).tolist()))
    stored = {}
    for ids, labels, clusters, losses in zip(*ds.values(
            ["gt.detections.id", "gt.detections.label", "gt.detections.pc_cluster", "gt.detections.pc_loss"])):
        for i, label, c, loss in zip(ids, labels, clusters, losses):
            if label in ("left", "right"):
                assert c == by_label[i] and loss is not None and loss >= 0
            else:  # filtered out of the view: untouched
                assert c is None and loss is None
            stored[i] = c
    assert len(by_label) == len(patches) == 2 * len(ds)
    assert ds.count("gt.detections.pc_rep") == 4  # 2 ranked per cluster

    # nothing else changed
    after = _snapshot(ds, "emb")
    for sid in before:
        for det in after[sid]["gt"]["detections"]:
            for k in ("pc_cluster", "pc_loss", "pc_rep"):
                det.pop(k, None)
    assert after == before

    cluster0 = clustering.load_run_view(ds, "pc", cluster=0)
    assert cluster0._is_patches and set(cluster0.values("id")) == {i for i, c in by_label.items() if c == 0}
    assert cluster0.values("gt.pc_loss") == sorted(cluster0.values("gt.pc_loss"))
    reps = clustering.load_run_view(ds, "pc", representatives=True)
    assert reps.values("gt.pc_rep") == [1, 2, 1, 2]

    with pytest.raises(ValueError, match="clusters patches of 'gt'.*label_clusters"):
        clustering.label_clusters(ds, "pc", provider="offline")
    with pytest.raises(ValueError, match="clusters patches of 'gt'"):
        clustering.evaluate_run(ds, "pc", gt_field="kind")

    clustering.rename_run(ds, "pc", "objects")
    assert not ds.has_field("gt.detections.pc_cluster")
    renamed = {i: c for ids, cs in zip(*ds.values(["gt.detections.id", "gt.detections.objects_cluster"]))
               for i, c in zip(ids, cs)}
    assert renamed == stored
    assert len(clustering.load_run_view(ds, "objects")) == len(patches)

    plugin_operator("compute_clusters")(patches, run_key="op", embeddings="gt.emb", reduction="none", method="kmeans", k=3)
    assert ds.count("gt.detections.op_cluster") == len(patches)
    assert len(clustering.load_run_view(ds, "op", cluster=2)) == ds.count_values("gt.detections.op_cluster")[2]

    # with a model: the crops of exactly these patches are embedded first
    few = patches.limit(5)
    clustering.compute_clusters(few, "m", model=MODEL, method="kmeans", k=2, progress=quiet)
    assert ds.count("gt.detections.efficientnet_lite0_embeddings") == 5
    assert ds.count("gt.detections.m_cluster") == 5

    clustering.delete_run(ds, "m")
    ds.delete_sample_field("gt.detections.efficientnet_lite0_embeddings")
    clustering.delete_run(ds, "op")
    clustering.delete_run(ds, "objects")
    assert "objects" not in ds.list_runs()
    assert not any(ds.has_field(f"gt.detections.objects_{x}") for x in ("cluster", "loss", "rep"))
    assert _snapshot(ds, "emb") == before


def test_zoo_models_embed_patches_through_fiftyone(patches_dataset, monkeypatch):
    """``zoo:`` models run through FiftyOne's compute_patch_embeddings; a
    FiftyOne TorchImageModel wrapping the same network stands in for the
    download, so its vectors match the built-in pipeline's."""
    import fiftyone.utils.torch as fout
    import fiftyone.zoo as foz

    import clustering
    import clustering.features.backbones as bb

    spec = bb.get_spec(MODEL)
    features, _ = spec.factory()

    def fake_load_zoo_model(name, **kwargs):
        config = {
            "model": features,
            "image_size": [224, 224],
            "image_mean": list(spec.mean),
            "image_std": list(spec.std),
            "as_feature_extractor": True,
            "ragged_batches": False,
            "device": "cpu",
        }
        return fout.TorchImageModel(fout.TorchImageModelConfig(config))

    monkeypatch.setattr(foz, "load_zoo_model", fake_load_zoo_model)
    ds = patches_dataset
    summary = clustering.compute_embeddings(ds, "zoo:clip-vit-base32-torch", "z", patches_field="gt", progress=quiet)
    assert summary["num_embedded"] == 2 * len(ds) + 1 and summary["num_degenerate"] == len(DEGENERATE)
    clustering.compute_embeddings(ds, MODEL, "b", patches_field="gt", progress=quiet)
    Z, B = _label_vectors(ds, "z"), _label_vectors(ds, "b")
    assert Z.keys() == B.keys()
    for key in Z:
        if key[1] in DEGENERATE:
            assert Z[key] is None and B[key] is None
        else:
            assert _cos(Z[key], B[key]) > 0.97, key
