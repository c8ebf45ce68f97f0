"""End to end in a real browser: the ``compute_clusters`` form filled by
typing in the App's operator browser, the run checked in the database, then the
new cluster field filtered in the App's sidebar (harness: ``app_harness.py``)."""

import os
import re
import time
from collections import Counter

import pytest

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

RUN_KEY = "e2e"
K = 3
N_INIT = 2
LOSS = "correntropy"
LOSS_LABEL = "Correntropy (sigma)"
RUN_TIMEOUT_S = 90

pytestmark = E2E_MARKS


def test_compute_clusters_from_the_app(pixel_dataset, page, app_url, artifacts, fo):
    dataset = pixel_dataset
    n = len(dataset)
    steps = Steps(page, artifacts)
    expect = sync_api.expect
    with steps.recording(dataset):
        # 1. the dataset page
        page.goto(f"{app_url}/datasets/{dataset.name}", wait_until="load", timeout=60_000)
        counts = page.locator("[data-cy=entry-counts]")
        expect(counts).to_have_text(re.compile(rf"^\s*{n}\s+samples\s*$"), timeout=60_000)
        # thumbnails drawn: their ground_truth tags are on screen
        expect(page.locator("[data-cy='tag-ground_truth']").first).to_be_visible()
        grid_settled(page)
        steps.shot("dataset")

        # 2. the operator browser (backtick), "Compute clusters", Enter
        page.keyboard.press("`")
        expect(page.get_by_placeholder(re.compile("Search operations", re.I))).to_be_visible()
        page.keyboard.type("Compute clusters", delay=30)
        expect(page.get_by_text("compute_clusters", exact=True)).to_be_visible()
        steps.shot("operator-browser")
        page.keyboard.press("Enter")
        execute = page.get_by_role("button", name="Execute", exact=True)
        # the first resolution briefly flags defaults as "Required property";
        # typing before it settles could be overwritten by its re-render
        expect(execute).to_be_enabled()
        expect(after_label(page, "Method", "combobox")).to_have_text("Generalized k-means (loss-based)")
        steps.shot("form")

        # 3. fill the form: embeddings field, k, loss, restarts, run key
        choose(page, "Embeddings field", "pixels")
        type_into(page, "Number of clusters (k)", str(K))
        choose(page, "Loss", LOSS_LABEL)
        type_into(page, "Restarts (best objective kept)", str(N_INIT))
        type_into(page, "Run key", RUN_KEY)
        expect(execute).to_be_enabled()  # the last re-resolution is done and valid
        steps.shot("form-filled")
        execute_form(page)

        # 4. the run, in the database: done once its results are saved (the
        # fields and the run's config are written before the values)
        deadline = time.time() + RUN_TIMEOUT_S
        while True:
            dataset.reload()
            if RUN_KEY in dataset.list_runs() and dataset.load_run_results(RUN_KEY, cache=False) is not None:
                break
            if time.time() > deadline:
                log = tail(os.path.join(artifacts, "server.log"))
                pytest.fail(f"run '{RUN_KEY}' not saved after {RUN_TIMEOUT_S}s; server log:\n{log}")
            # not time.sleep(): the sync API runs the route handler (the network
            # fence) only while a Playwright call is waiting
            page.wait_for_timeout(1000)
        config = dataset.get_run_info(RUN_KEY).config
        assert (config.method, config.loss, config.k, config.n_init) == ("generalized_kmeans", LOSS, K, N_INIT)
        assert (config.source, config.embeddings_field) == ("field", "pixels")
        labels = dataset.values(f"{RUN_KEY}_cluster")
        sizes = Counter(labels)
        assert set(sizes) == set(range(K)), sizes
        # the operator's output: "**3 clusters** of 392 samples (generalized_kmeans, loss correntropy, ...)"
        expect(page.get_by_text(re.compile(rf"of {n} samples \(generalized_kmeans, loss {LOSS}"))).to_be_visible()
        # ... and its Plotly chart of the cluster sizes: K bars, not collapsed
        plot = page.locator(".js-plotly-plot").first
        expect(plot.locator("g.point")).to_have_count(K)
        assert plot.bounding_box()["height"] > 100, plot.bounding_box()
        steps.shot("executed")

        # 5. the cluster field in the sidebar, its values on the thumbnails
        page.get_by_role("button", name="Done", exact=True).click()
        field = f"{RUN_KEY}_cluster"
        expect(page.locator(f"[data-cy='sidebar-field-{field}']")).to_be_visible()
        page.locator(f"[data-cy='checkbox-{field}']").click()
        tags = page.locator(f"[data-cy='tag-{field}']")
        expected = [str(label) for label in labels]

        def first_rows_match():  # the first rows of the grid, in dataset order
            shown = tags.all_inner_texts()
            return len(shown) >= 6 and shown == expected[: len(shown)]

        poll(page, first_rows_match, f"the thumbnails to show {field} as in the database")
        grid_settled(page)
        steps.shot("cluster-field-shown")

        # 6. filter to one cluster (min = max: the App's numeric filter)
        cluster, size = min(sizes.items(), key=lambda kv: (kv[1], kv[0]))
        assert 0 < size < n
        page.locator(f"[data-cy='sidebar-field-arrow-enabled-{field}']").click()
        numeric = page.locator(f"[data-cy='numeric-filter-{field}']")
        for bound in ("min", "max"):
            box = numeric.locator(f"input[placeholder='{bound}']")
            box.click()
            box.press_sequentially(str(cluster), delay=40)
            box.press("Enter")
        # "<size> samples" (or "<size> of <n> samples") in the grid's header
        expect(counts).to_have_text(re.compile(rf"^\s*{size}\s+(of\s+{n}\s+)?samples\s*$"))
        expect(page.locator(f"[data-cy='sidebar-field-container-{field}']")).to_contain_text(str(size))

        def only_that_cluster():  # stale thumbnails may linger a moment
            shown = tags.all_inner_texts()
            return len(shown) >= min(size, 6) and set(shown) == {str(cluster)}

        poll(page, only_that_cluster, f"the grid to show only {field} = {cluster}")
        grid_settled(page)
        steps.shot("filtered")


def test_choose_k_from_the_app(pixel_dataset, page, app_url, artifacts):
    """`Choose k` from the operator browser: the recommendation and the
    criteria's charts (which criteria agree, then one per criterion)."""
    dataset = pixel_dataset
    steps = Steps(page, artifacts)
    expect = sync_api.expect
    with steps.recording(dataset):
        page.goto(f"{app_url}/datasets/{dataset.name}", wait_until="load", timeout=60_000)
        expect(page.locator("[data-cy=entry-counts]")).to_have_text(re.compile(r"samples"), timeout=60_000)
        page.keyboard.press("`")
        page.keyboard.type("Choose k", delay=30)
        expect(page.get_by_text("choose_k", exact=True)).to_be_visible()
        page.keyboard.press("Enter")
        execute = page.get_by_role("button", name="Execute", exact=True)
        expect(execute).to_be_enabled()
        choose(page, "Embeddings field", "pixels")
        type_into(page, "Largest k", "6")
        type_into(page, "Restarts per k", "1")
        expect(execute).to_be_enabled()
        steps.shot("form-filled")
        execute_form(page)

        # the same sweep in Python gives the k the App shows
        expected = __import__("clustering").choose_k(
            dataset, "pixels", k_min=2, k_max=6, n_init=1, progress=False
        )["recommended_k"]
        expect(page.get_by_text(re.compile(rf"Recommended k = {expected}\b"))).to_be_visible(timeout=RUN_TIMEOUT_S * 1000)
        plots = page.locator(".js-plotly-plot")
        expect(plots).to_have_count(7)  # criteria agreement + six criteria
        # the agreement chart has one marker row per criterion, not collapsed
        assert plots.first.bounding_box()["height"] > 100, plots.first.bounding_box()
        expect(plots.first.locator("g.point").first).to_be_attached()
        steps.shot("executed")
