"""End to end in a real browser: the FiftyOne App server in a subprocess, headless
Chromium driven by Playwright, the ``compute_clusters`` form filled by typing,
the run checked in the database, then the new cluster field filtered in the
App's sidebar.

A screenshot and the page's HTML of every step (and of a failure) go to
``test-artifacts/e2e/``, with the App server's log and the browser's console and
blocked requests (``browser.txt``). Needs ``/usr/bin/chromium`` (Debian's
``chromium`` package) and the ``playwright`` Python package; no browser is
downloaded. Nothing leaves loopback: the browser's only proxy is a dead loopback
port, which only 127.0.0.1/localhost bypass.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from urllib.parse import urlsplit

import pytest

from conftest import REPO_ROOT

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = os.path.join(REPO_ROOT, "test-artifacts", "e2e")
RUN_KEY = "e2e"
K = 3
N_INIT = 2
LOSS = "correntropy"
LOSS_LABEL = "Correntropy (sigma)"
SERVER_START_S = 90
RUN_TIMEOUT_S = 90
UI_TIMEOUT_MS = 30_000
LOOPBACK = ("127.0.0.1", "localhost")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"{CHROMIUM} not installed (apt-get install chromium); the App e2e test needs it",
    ),
]

try:
    from playwright import sync_api
except ImportError as e:  # not installed, or its driver is unusable
    pytest.skip(f"the playwright Python package is not usable: {e}", allow_module_level=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path, n=4000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def _stop(proc, timeout=20):
    """SIGTERM the process group that ``proc`` leads, then SIGKILL it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


@pytest.fixture
def artifacts():
    os.makedirs(ARTIFACTS, exist_ok=True)
    for name in os.listdir(ARTIFACTS):
        if name.endswith((".png", ".html", ".log", ".txt")):
            os.remove(os.path.join(ARTIFACTS, name))
    return ARTIFACTS


@pytest.fixture
def app_url(fo, artifacts):
    """The FiftyOne App server on a free loopback port, in its own process
    (same environment: the throwaway database and plugins directory)."""
    port = _free_port()
    log_path = os.path.join(artifacts, "server.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1", "--port", str(port)],
            env=dict(os.environ),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore *_proxy
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"App server exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                with direct.open(url + "/", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"App server not up after {SERVER_START_S}s:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def page(app_url, artifacts):
    """A headless Chromium page that can reach nothing but loopback."""
    blocked, console = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            # everything but loopback goes to a dead loopback port (websockets too)
            proxy={"server": "http://127.0.0.1:9", "bypass": ",".join(LOOPBACK)},
            timeout=60_000,
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900}, service_workers="block")

            def fence(route):
                # the App asks for Google fonts: refused here, and recorded
                if urlsplit(route.request.url).hostname in LOOPBACK:
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            context.route(re.compile(r"^https?://"), fence)
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            sync_api.expect.set_options(timeout=UI_TIMEOUT_MS)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            # the "Explore Enterprise" pop-up can cover the grid at any time
            page.add_locator_handler(
                page.get_by_role("button", name="Dismiss", exact=True),
                lambda button: button.click(),
            )
            yield page
        finally:
            try:
                with open(os.path.join(artifacts, "browser.txt"), "w") as f:
                    f.write("blocked non-loopback requests:\n" + "\n".join(blocked))
                    f.write("\n\nconsole:\n" + "\n".join(console) + "\n")
            finally:
                browser.close()


class Steps:
    """Numbered screenshots (and the page's HTML on demand) of the steps."""

    def __init__(self, page, artifacts):
        self.page, self.dir, self.n = page, artifacts, 0

    def shot(self, name, html=True):
        self.n += 1
        base = os.path.join(self.dir, f"{self.n:02d}-{name}")
        self.page.screenshot(path=base + ".png")
        if html:
            with open(base + ".html", "w") as f:
                f.write(self.page.content())


def _after_label(page, label, what="input"):
    """The form control that follows the paragraph holding exactly ``label``
    (the operator form's labels are <p>s, not <label for=...>)."""
    xpath = {
        "input": "following::input[not(@aria-hidden='true')][1]",
        "combobox": "following::*[@role='combobox'][1]",
    }[what]
    label_el = page.locator("p", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).first
    return label_el.locator(f"xpath={xpath}")


def _type_into(page, label, text, attempts=3):
    """Types ``text`` into the input after ``label``. The form is dynamic (the
    server re-resolves it on every change), so the value is checked and typed
    again if a re-render swallowed keystrokes."""
    for attempt in range(attempts):
        box = _after_label(page, label)
        box.scroll_into_view_if_needed()
        box.click()
        box.press("Control+A")
        box.press("Backspace")
        box.press_sequentially(text, delay=40)
        try:
            sync_api.expect(_after_label(page, label)).to_have_value(text, timeout=5_000)
            return
        except AssertionError:
            if attempt == attempts - 1:
                raise


def _choose(page, label, option_text):
    """Opens the dropdown after ``label`` and clicks the option that starts with
    ``option_text`` (options may carry a description after the label)."""
    box = _after_label(page, label, "combobox")
    box.scroll_into_view_if_needed()
    box.click()
    page.get_by_role("option").filter(has_text=re.compile(rf"^\s*{re.escape(option_text)}")).first.click()
    sync_api.expect(_after_label(page, label, "combobox")).to_have_text(option_text)


def _grid_settled(page):
    """Waits for the grid's loading animation ("falling pixels") to be hidden."""
    pixels = page.locator("[class*='_fallingPixels_']")
    if pixels.count():
        sync_api.expect(pixels.first).to_have_class(re.compile(r"_hidden_"))


def _poll(page, check, what, timeout_s=UI_TIMEOUT_MS / 1000):
    """Calls ``check()`` until it returns a true value (returned) or fails."""
    deadline = time.time() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        page.wait_for_timeout(500)


def test_compute_clusters_from_the_app(pixel_dataset, page, app_url, artifacts, fo):
    dataset = pixel_dataset
    dataset.persistent = True  # the server process must find it
    n = len(dataset)
    steps = Steps(page, artifacts)
    expect = sync_api.expect
    try:
        # 1. the dataset page
        page.goto(f"{app_url}/datasets/{dataset.name}", wait_until="load", timeout=60_000)
        counts = page.locator("[data-cy=entry-counts]")
        expect(counts).to_have_text(re.compile(rf"^\s*{n}\s+samples\s*$"), timeout=60_000)
        # thumbnails drawn: their ground_truth tags are on screen
        expect(page.locator("[data-cy='tag-ground_truth']").first).to_be_visible()
        _grid_settled(page)
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
        expect(_after_label(page, "Method", "combobox")).to_have_text("Generalized k-means (loss-based)")
        steps.shot("form")

        # 3. fill the form: embeddings field, k, loss, restarts, run key
        _choose(page, "Embeddings field", "pixels")
        _type_into(page, "Number of clusters (k)", str(K))
        _choose(page, "Loss", LOSS_LABEL)
        _type_into(page, "Restarts (best objective kept)", str(N_INIT))
        _type_into(page, "Run key", RUN_KEY)
        expect(execute).to_be_enabled()  # the last re-resolution is done and valid
        steps.shot("form-filled")
        execute.click()

        # 4. the run, in the database: done once its results are saved (the
        # fields and the run's config are written before the values)
        deadline = time.time() + RUN_TIMEOUT_S
        while True:
            dataset.reload()
            if RUN_KEY in dataset.list_runs() and dataset.load_run_results(RUN_KEY, cache=False) is not None:
                break
            if time.time() > deadline:
                log = _tail(os.path.join(artifacts, "server.log"))
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

        _poll(page, first_rows_match, f"the thumbnails to show {field} as in the database")
        _grid_settled(page)
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

        _poll(page, only_that_cluster, f"the grid to show only {field} = {cluster}")
        _grid_settled(page)
        steps.shot("filtered")
    except BaseException:
        try:
            steps.shot("failure", html=True)
        except Exception:
            pass
        raise
    finally:
        try:
            dataset.persistent = False
        except Exception:
            pass
