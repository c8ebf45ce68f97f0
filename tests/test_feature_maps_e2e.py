"""End to end in a real browser: the ``Feature maps`` modal panel in the App
(harness: ``app_harness.py``). A sample is opened, the panel added to the
modal, one image per tapped layer checked (and screenshotted), the next sample
shown (its maps change), then a model whose weights cannot be loaded: the panel
says so and offers the offline model."""

import os
import re

import pytest

from app_harness import (  # noqa: F401 (fixtures)
    E2E_MARKS,
    Steps,
    after_label,
    execute_form,
    app_url,
    artifacts,
    grid_settled,
    page,
    poll,
    sync_api,
    type_into,
)

import clustering.features.activations as ca
import clustering.features.backbones as bb

pytestmark = E2E_MARKS

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
HEATMAP_FIELD = "blocks_4_heatmap"


@pytest.fixture(autouse=True)
def offline_server(monkeypatch, tmp_path):
    """The App server (started after this) has no network and an empty torch
    cache: VGG16's weights cannot be loaded, EfficientNet-Lite0's can."""
    monkeypatch.setenv(bb.OFFLINE_ENV, "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def photos_dataset(fo, tmp_path, request):
    """A persistent dataset of scikit-image photographs (the server must find
    it), the first two with a Heatmap field."""
    from PIL import Image
    from skimage import data

    paths = []
    for name in PHOTOS:
        path = str(tmp_path / f"{name}.jpg")
        Image.fromarray(getattr(data, name)()).save(path, quality=90)
        paths.append(path)
    name = "e2e-" + request.node.name[:50]
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    # before the browser starts (Playwright's event loop would make the operator asynchronous)
    ca.compute_feature_heatmaps(dataset.limit(2), HEATMAP_FIELD, bb.DEFAULT_MODEL, "_blocks.4", progress=False)
    yield dataset
    fo.delete_dataset(name)


def _map_images(page):
    """The panel's map images (their alt text is the layer's caption)."""
    return page.locator("[data-cy=modal] img[alt*=' · ']")


def _drawn(page, images, what):
    """Waits for every image to be decoded; returns their natural widths."""
    check = "imgs => imgs.every(i => i.complete && i.naturalWidth > 0) && imgs.map(i => i.naturalWidth)"
    return poll(page, lambda: images.evaluate_all(check), what)


def _settled_screenshot(page, locator):
    """A screenshot of ``locator`` once two in a row are the same."""
    previous = locator.screenshot()
    while True:
        page.wait_for_timeout(500)
        current = locator.screenshot()
        if current == previous:
            return current
        previous = current


def test_feature_maps_panel_follows_the_current_sample(photos_dataset, page, app_url, artifacts):
    dataset = photos_dataset
    layers = ca.default_layers(bb.DEFAULT_MODEL)
    strip_width = 8 * 112 + 7 * 4  # 8 channels of 112 px, 4 px apart
    steps = Steps(page, artifacts)
    expect = sync_api.expect
    with steps.recording():
        # 1. the first sample in the modal; its stored heatmap overlaid on the image
        page.goto(f"{app_url}/datasets/{dataset.name}", wait_until="load", timeout=60_000)
        expect(page.locator("[data-cy=entry-counts]")).to_have_text(re.compile(rf"^\s*{len(dataset)}\s+samples\s*$"), timeout=60_000)
        grid_settled(page)
        page.locator("[data-cy=fo-grid] [data-cy=looker]").first.click()
        looker = page.locator("[data-cy=modal] [data-cy=modal-looker-container]")
        expect(looker.locator("canvas[canvas-loaded=true]")).to_be_visible()
        plain = _settled_screenshot(page, looker)
        steps.shot("modal")
        page.locator(f"[data-cy=modal] [data-cy=checkbox-{HEATMAP_FIELD}]").click()
        poll(page, lambda: looker.screenshot() != plain, "the heatmap overlay to be drawn")
        steps.shot("heatmap-overlay")

        # 2. the panel (a tab of the modal), beside the sample: one image per tapped layer
        page.locator("[data-cy=modal] [data-cy=panel-tab-feature_maps]").click()
        page.locator("[data-cy=modal] [title='Split horizontally']").click()
        images = _map_images(page)
        expect(images).to_have_count(len(layers), timeout=60_000)
        assert [image.get_attribute("alt").split(" · ")[0] for image in images.all()] == [f"**{n}" for n in layers]
        assert _drawn(page, images, "the maps drawn") == [strip_width] * len(layers)
        expect(looker).to_be_visible()
        shown = page.locator("[data-cy=modal] p", has_text=" sees it: ")  # "<file> as <model> sees it: ..."
        expect(shown).to_contain_text(f"astronaut.jpg as {bb.DEFAULT_MODEL} sees it")
        first = [image.get_attribute("src") for image in images.all()]
        steps.shot("panel")

        # 3. the next sample: new maps
        page.locator("[data-cy=modal] [data-cy=nav-right-button]").click()
        expect(shown).to_contain_text("coffee.jpg", timeout=60_000)
        poll(page, lambda: [i.get_attribute("src") for i in images.all()] != first, "the maps to change")
        second = [image.get_attribute("src") for image in images.all()]
        assert len(second) == len(layers) and all(a != b for a, b in zip(first, second))
        _drawn(page, images, "the new maps drawn")
        steps.shot("next-sample")

        # 4. a control: 4 channels per layer
        type_into(page, "Channels", "4")
        poll(page, lambda: _drawn(page, images, "4 channels") == [4 * 112 + 3 * 4] * len(layers), "4 channels a row")
        steps.shot("four-channels")

        # 5. VGG16 without its weights: the panel says so and offers the offline model
        page.locator("[data-cy=modal]").get_by_role("combobox").first.click()
        page.get_by_role("option").filter(has_text=re.compile(r"^\s*vgg16")).first.click()
        expect(page.get_by_text(re.compile("cannot be loaded here"))).to_be_visible(timeout=60_000)
        expect(images).to_have_count(0)
        steps.shot("vgg16-unavailable")
        page.get_by_role("button", name=re.compile("Use the offline model")).click()
        expect(images).to_have_count(len(layers), timeout=60_000)
        _drawn(page, images, "the offline model's maps drawn")
        steps.shot("offline-again")

        # 6. "Store as heatmaps…": the operator's form, prefilled; executed for the dataset
        page.get_by_role("button", name="Store as heatmaps…").click()
        execute = page.get_by_role("button", name="Execute", exact=True)
        expect(execute).to_be_enabled()
        field = ca.default_heatmap_field(bb.DEFAULT_MODEL, "_conv_head")
        expect(after_label(page, "Heatmap field")).to_have_value(field)
        steps.shot("store-heatmaps-form")
        execute_form(page)
        expect(page.get_by_text(re.compile(rf"{len(dataset)} heatmaps of {bb.DEFAULT_MODEL}"))).to_be_visible(timeout=60_000)
        steps.shot("heatmaps-stored")
        dataset.reload()
        assert dataset.count(field) == len(dataset)
        assert dataset.count(HEATMAP_FIELD) == 2  # the other field untouched
