"""End to end in a real browser: the Clusters panel opened from the App's "+"
menu, a run picked, a cluster clicked (the grid shows exactly its samples),
two clusters merged and the run promoted to labels from the panel, each
checked in the database (harness: ``app_harness.py``). Screenshots go to
``test-artifacts/e2e/<test name>/``: every step, the panel alone
(``panel.png``), and the grid beside the panel, small (``readme.png``, the
README's ``assets/clusters_panel.png``)."""

import os
import re
import time
from collections import Counter

import pytest

import clustering
from fiftyone import ViewField as F
from app_harness import (  # noqa: F401 (fixtures)
    E2E_MARKS,
    Steps,
    after_label,
    execute_form,
    choose,
    grid_settled,
    poll,
    tail,
    type_into,
    app_url,
    artifacts,
    page,
    sync_api,
)

RUN_KEY = "km"
OTHER_RUN = "other"  # the panel opens on the last run; the test picks RUN_KEY
K = 5
ACTION_TIMEOUT_S = 60

pytestmark = E2E_MARKS
quiet = lambda *a: None  # noqa: E731


def wait_for_db(page, check, what, artifacts):
    """Polls the database (through ``check``) while the browser keeps running."""
    deadline = time.time() + ACTION_TIMEOUT_S
    while not check():
        if time.time() > deadline:
            pytest.fail(f"{what} not seen in the database after {ACTION_TIMEOUT_S}s; server log:\n{tail(os.path.join(artifacts, 'server.log'))}")
        page.wait_for_timeout(500)  # not time.sleep(): the network fence runs while Playwright waits


def grid_count(page, size, n):
    """Waits for the grid's header to say ``size`` samples."""
    sync_api.expect(page.locator("[data-cy=entry-counts]")).to_have_text(
        re.compile(rf"^\s*{size}\s+(of\s+{n}\s+)?samples\s*$")
    )


def save_readme_screenshot(page, path, scale=0.7, colors=128):
    """The grid and the panels beside it (no sidebar, no header), shrunk and
    reduced to a palette so that the PNG stays small."""
    import io

    from PIL import Image

    tabs = page.locator("[data-cy=panel-tab-samples]").bounding_box()
    viewport = page.viewport_size
    x, y = max(0, tabs["x"] - 8), max(0, tabs["y"] - 8)
    png = page.screenshot(clip={"x": x, "y": y, "width": viewport["width"] - x, "height": viewport["height"] - y})
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    image.quantize(colors=colors, dither=Image.Dither.NONE).save(path, optimize=True)


def card_size(size):
    """A card's text (name, size, compactness) that gives this size."""
    return re.compile(rf"(^|\s){size} samples(\s|$)")


def card_checkbox(panel, cluster):
    return panel.get_by_role("button", name=str(cluster), exact=True).locator("xpath=preceding::input[@type='checkbox'][1]")


def open_clusters_panel(page, app_url, dataset, ready):
    """The dataset's page with the Clusters panel opened ("+" -> Clusters),
    once the panel shows ``ready`` (a regex); returns the panel."""
    page.goto(f"{app_url}/datasets/{dataset.name}", wait_until="load", timeout=60_000)
    sync_api.expect(page.locator("[data-cy=entry-counts]")).to_have_text(
        re.compile(rf"^\s*{len(dataset)}\s+samples\s*$"), timeout=60_000
    )
    grid_settled(page)
    page.locator("[data-cy=new-panel-btn]").first.click()
    page.get_by_text("Clusters", exact=True).click()
    panel = page.locator("[data-cy=panel-content-clusters_panel]")
    sync_api.expect(panel.get_by_text(re.compile(ready))).to_be_visible(timeout=60_000)
    return panel


def test_clusters_panel_browse_merge_promote(pixel_dataset, page, app_url, artifacts, fo):
    dataset = pixel_dataset
    clustering.compute_clusters(dataset, RUN_KEY, embeddings="pixels", reduction="none", k=K, n_init=2, progress=quiet)
    clustering.compute_clusters(dataset, OTHER_RUN, embeddings="pixels", reduction="none", method="kmeans", k=3, progress=quiet)
    n = len(dataset)
    steps = Steps(page, artifacts)
    expect = sync_api.expect
    with steps.recording(dataset):
        # 1. the dataset page, then "+" -> Clusters
        panel = open_clusters_panel(page, app_url, dataset, r"samples clustered")
        steps.shot("panel-opened")

        # 2. pick the run: the header and one card per cluster, with thumbnails
        choose(page, "Run", RUN_KEY)
        expect(panel.get_by_text(re.compile(rf"k = {K} · {K} clusters · {n} samples clustered"))).to_be_visible()
        sizes = dataset.count_values(f"{RUN_KEY}_cluster")
        for c in range(K):
            expect(panel.get_by_role("button", name=str(c), exact=True)).to_be_visible()
            expect(panel.get_by_text(card_size(sizes[c]))).to_have_count(sum(v == sizes[c] for v in sizes.values()))
        thumbnails = panel.locator("img[src*='/media?filepath=']")
        expect(thumbnails).to_have_count(K * clustering.runs.browse.DEFAULT_NUM_THUMBNAILS)
        loaded = "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)"
        poll(page, lambda: thumbnails.evaluate_all(loaded), "the thumbnails to load")
        steps.shot("run-picked")

        # 2b. each card shows its stability, the header the run's; sorting by it puts the least stable first
        scores = {int(c): s for c, s in clustering.load_clustering_results(dataset, RUN_KEY).stability.items()}
        assert set(scores) == set(range(K))
        expect(panel.get_by_text(re.compile(r"· stability \d\.\d\d"))).to_be_visible()
        for c, score in scores.items():
            expect(panel.get_by_text(re.compile(rf"stability {score:.2f}$"))).not_to_have_count(0)
        choose(page, "Sort", "Stability (least stable first)")
        first_card = panel.get_by_role("button", name=re.compile(r"^\d+$")).first
        expect(first_card).to_have_text(str(min(scores, key=scores.get)))
        steps.shot("sorted-by-stability")
        choose(page, "Sort", "Cluster id")

        # 3. click a cluster: the grid shows exactly its samples, nearest its center first
        cluster = min(sizes, key=lambda c: (sizes[c], c))
        panel.get_by_role("button", name=str(cluster), exact=True).click()
        grid_count(page, sizes[cluster], n)
        expect(panel.get_by_text(f"Cluster {cluster}", exact=True)).to_be_visible()  # kept when the view changed
        grid_settled(page)
        steps.shot("cluster-shown")

        # 4. rename the faces' cluster from the panel (the form comes filled in)
        labels, truth = dataset.values([f"{RUN_KEY}_cluster", "ground_truth.label"])
        faces = Counter(c for c, t in zip(labels, truth) if t == "face").most_common(1)[0][0]
        panel.get_by_role("button", name=str(faces), exact=True).click()
        grid_count(page, sizes[faces], n)
        panel.get_by_role("button", name="Rename").click()
        expect(after_label(page, "Cluster", "combobox")).to_have_text(re.compile(rf"^{faces} \({sizes[faces]} samples\)"))
        type_into(page, "Name", "faces")
        execute_form(page)
        def named():
            dataset.reload()
            name_field = f"{RUN_KEY}_name"
            return dataset.has_field(name_field) and dataset.match(F(f"{RUN_KEY}_cluster") == faces).distinct(name_field) == ["faces"]

        wait_for_db(page, named, "the cluster's name", artifacts)
        page.get_by_role("button", name="Close", exact=True).click()
        expect(panel.get_by_text(re.compile(rf"^faces\n{sizes[faces]} samples"))).to_be_visible()

        # 5. ground truth: majority class and purity per card, NMI in the header
        choose(page, "Ground truth", "ground_truth")
        expect(panel.get_by_text(re.compile(r"NMI \d\.\d{3}"))).to_be_visible()
        expect(panel.get_by_text(re.compile(r"\n(face|non-face|brick|grass|gravel) \(\d+%\)$"))).to_have_count(K)
        panel.screenshot(path=os.path.join(artifacts, "panel.png"))
        grid_settled(page)
        save_readme_screenshot(page, os.path.join(artifacts, "readme.png"))
        steps.shot("ground-truth")

        # 6. merge two clusters: check their cards, "Merge checked", execute the form
        a, b = sorted(c for c in sizes if c not in (cluster, faces))[:2]
        losses_before = dict(zip(*dataset.values(["id", f"{RUN_KEY}_loss"])))
        card_checkbox(panel, a).check()
        card_checkbox(panel, b).check()
        panel.get_by_role("button", name="Merge checked").click()
        expect(page.get_by_text(re.compile(rf"^{b}(: .*)? \({sizes[b]} samples\)$"))).to_be_visible()
        steps.shot("merge-form")
        execute_form(page)

        def merged():
            dataset.reload()
            return dataset.count_values(f"{RUN_KEY}_cluster").get(b) is None

        wait_for_db(page, merged, f"the merge of clusters {a} and {b}", artifacts)
        after = dataset.count_values(f"{RUN_KEY}_cluster")
        assert after[a] == sizes[a] + sizes[b]
        assert {c: v for c, v in after.items() if c != a} == {c: v for c, v in sizes.items() if c not in (a, b)}
        ids, labels, losses, ranks = dataset.values(["id", f"{RUN_KEY}_cluster", f"{RUN_KEY}_loss", f"{RUN_KEY}_rep"])
        members = [i for i, c in zip(ids, labels) if c == a]
        assert any(losses[ids.index(i)] != losses_before[i] for i in members)  # the center was recomputed
        merged_ranks = sorted(r for c, r in zip(labels, ranks) if c == a and r)
        assert merged_ranks == list(range(1, len(merged_ranks) + 1))
        # the panel reloaded: no card for b, the merged card's size, the grid on the merged cluster
        page.get_by_role("button", name="Close", exact=True).click()
        expect(panel.get_by_role("button", name=str(b), exact=True)).to_have_count(0)
        expect(panel.get_by_text(card_size(after[a]))).to_be_visible()
        grid_count(page, after[a], n)
        grid_settled(page)
        steps.shot("merged")

        # 7. promote the run to labels from the panel
        panel.get_by_role("button", name="To labels").click()
        field = after_label(page, "Label field")
        expect(field).to_have_value(f"{RUN_KEY}_label")
        steps.shot("labels-form")
        execute_form(page)

        def promoted():
            dataset.reload()
            return dataset.has_field(f"{RUN_KEY}_label") and dataset.count(f"{RUN_KEY}_label") == n

        wait_for_db(page, promoted, f"the field '{RUN_KEY}_label'", artifacts)
        labels_now, classes, confidences = dataset.values([f"{RUN_KEY}_cluster", f"{RUN_KEY}_label.label", f"{RUN_KEY}_label.confidence"])
        names = {c: "faces" if c == faces else f"cluster_{c}" for c in after}
        assert classes == [names[c] for c in labels_now]
        assert all(0 < v <= 1 for v in confidences)
        assert Counter(classes) == {names[c]: v for c, v in after.items()}
        page.get_by_role("button", name="Close", exact=True).click()
        expect(page.locator("[data-cy='sidebar-field-km_label']")).to_be_visible()
        grid_settled(page)
        steps.shot("promoted")


def test_clusters_panel_drills_down_and_back_up(pixel_dataset, page, app_url, artifacts, fo):
    """Sub-cluster a cluster from the panel, click a sub-cluster (the grid
    shows exactly its samples), go back up (the grid shows its parent)."""
    dataset = pixel_dataset
    clustering.compute_clusters(dataset, RUN_KEY, embeddings="pixels", reduction="none", k=K, n_init=2, progress=quiet)
    n = len(dataset)
    sizes = dataset.count_values(f"{RUN_KEY}_cluster")
    parent = max(sizes, key=lambda c: (sizes[c], -c))
    steps = Steps(page, artifacts)
    expect = sync_api.expect
    with steps.recording(dataset):
        panel = open_clusters_panel(page, app_url, dataset, rf"k = {K} · {K} clusters")

        # select the largest cluster, "Sub-cluster", 2 sub-clusters
        panel.get_by_role("button", name=str(parent), exact=True).click()
        grid_count(page, sizes[parent], n)
        panel.get_by_role("button", name="Sub-cluster").click()
        expect(after_label(page, "Cluster", "combobox")).to_have_text(re.compile(rf"^{parent} \({sizes[parent]} samples\)"))
        type_into(page, "Number of sub-clusters (optional)", "2")
        steps.shot("subcluster-form")
        execute_form(page)
        level = f"{RUN_KEY}_l2"

        def stored():
            dataset.reload()
            # the writer registers the run before its fields: wait until it is done
            return level in dataset.list_runs() and clustering.check_run(dataset, level)["state"] == "consistent" \
                and dataset.count(f"{level}_cluster") == sizes[parent]

        wait_for_db(page, stored, f"the sub-clusters of cluster {parent}", artifacts)
        page.get_by_role("button", name="Close", exact=True).click()
        expect(panel.get_by_text(re.compile(rf"cluster {parent}.* its sub-clusters in {level}"))).to_be_visible()
        subsizes = dataset.count_values(f"{level}_cluster")
        subsizes.pop(None, None)
        assert sorted(subsizes.values()) != [] and sum(subsizes.values()) == sizes[parent]
        grid_settled(page)
        steps.shot("sub-clusters")

        # a sub-cluster: the grid shows exactly its samples
        child = min(subsizes, key=lambda c: (subsizes[c], c))
        panel.get_by_role("button", name=str(child), exact=True).click()
        grid_count(page, subsizes[child], n)
        assert set(dataset.match(F(f"{level}_cluster") == child).values(f"{level}_path")) == {f"{parent}/{child}"}
        grid_settled(page)
        steps.shot("sub-cluster-shown")

        # back up: the top run, its clusters, the parent in the grid
        panel.get_by_role("button", name="Up").click()
        grid_count(page, sizes[parent], n)
        expect(panel.get_by_text(re.compile(r"2 sub-clusters"))).to_be_visible()
        expect(panel.get_by_role("button", name=str(parent), exact=True)).to_be_visible()
        grid_settled(page)
        steps.shot("back-up")
