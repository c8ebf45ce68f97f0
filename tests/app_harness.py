"""Shared harness of the end-to-end tests in a real browser: the FiftyOne App
server in a subprocess (same environment as the tests: the throwaway database
and plugins directory) and headless Chromium driven by Playwright, fenced to
loopback.

Test modules import the fixtures they use (``from app_harness import app_url,
artifacts, page``) and mark themselves with ``E2E_MARKS``. Screenshots and the
page's HTML of every step go to ``test-artifacts/e2e/<test name>/``, with the
App server's log and the browser's console and blocked requests
(``browser.txt``). Needs ``/usr/bin/chromium`` (Debian's ``chromium`` package)
and the ``playwright`` Python package; no browser is downloaded. Nothing leaves
loopback: the browser's only proxy is a dead loopback port, which only
127.0.0.1/localhost bypass.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from conftest import REPO_ROOT

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = os.path.join(REPO_ROOT, "test-artifacts", "e2e")
SERVER_START_S = 90
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

E2E_MARKS = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"{CHROMIUM} not installed (apt-get install chromium); the App e2e tests need it",
    ),
]

try:
    from playwright import sync_api
except ImportError as e:  # not installed, or its driver is unusable
    pytest.skip(f"the playwright Python package is not usable: {e}", allow_module_level=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=4000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def stop(proc, timeout=20):
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
def artifacts(request):
    """``test-artifacts/e2e/<test name>/``, emptied first."""
    path = os.path.join(ARTIFACTS, request.node.name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


@pytest.fixture
def app_url(fo, artifacts):
    """The FiftyOne App server on a free loopback port, in its own process
    (same environment: the throwaway database and plugins directory)."""
    port = free_port()
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
                pytest.fail(f"App server exited with {proc.returncode}:\n{tail(log_path)}")
            try:
                with direct.open(url + "/", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"App server not up after {SERVER_START_S}s:\n{tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)


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

    @contextlib.contextmanager
    def recording(self, dataset=None):
        """The block's steps, with a "failure" screenshot (and the page's HTML)
        if it fails; ``dataset`` is made persistent for it (the App server's
        process must find it) and non-persistent after."""
        if dataset is not None:
            dataset.persistent = True
        try:
            yield self
        except BaseException:
            try:
                self.shot("failure", html=True)
            except Exception:
                pass
            raise
        finally:
            if dataset is not None:
                try:
                    dataset.persistent = False
                except Exception:
                    pass


def execute_form(page):
    """Clicks the operator form's Execute button once the form has resolved:
    while the App re-resolves a form it shows a placeholder "Execute" button
    that ignores clicks, then the real (MUI) one."""
    button = page.locator("button.MuiButton-containedPrimary", has_text=re.compile(r"^\s*Execute\s*$"))
    sync_api.expect(button).to_be_enabled(timeout=UI_TIMEOUT_MS)
    button.click()


def after_label(page, label, what="input"):
    """The form control that follows the paragraph holding exactly ``label``
    (the operator form's labels are <p>s, not <label for=...>)."""
    xpath = {
        "input": "following::input[not(@aria-hidden='true')][1]",
        "combobox": "following::*[@role='combobox'][1]",
    }[what]
    label_el = page.locator("p", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).first
    return label_el.locator(f"xpath={xpath}")


def type_into(page, label, text, attempts=3):
    """Types ``text`` into the input after ``label``. The form is dynamic (the
    server re-resolves it on every change), so the value is checked and typed
    again if a re-render swallowed keystrokes."""
    for attempt in range(attempts):
        box = after_label(page, label)
        box.scroll_into_view_if_needed()
        box.click()
        box.press("Control+A")
        box.press("Backspace")
        box.press_sequentially(text, delay=40)
        try:
            sync_api.expect(after_label(page, label)).to_have_value(text, timeout=5_000)
            return
        except AssertionError:
            if attempt == attempts - 1:
                raise


def choose(page, label, option_text):
    """Opens the dropdown after ``label`` and clicks the option that starts with
    ``option_text`` (options may carry a description after the label)."""
    box = after_label(page, label, "combobox")
    box.scroll_into_view_if_needed()
    box.click()
    page.get_by_role("option").filter(has_text=re.compile(rf"^\s*{re.escape(option_text)}")).first.click()
    sync_api.expect(after_label(page, label, "combobox")).to_have_text(option_text)


def grid_settled(page):
    """Waits for the grid's loading animation ("falling pixels") to be hidden."""
    pixels = page.locator("[class*='_fallingPixels_']")
    if pixels.count():
        sync_api.expect(pixels.first).to_have_class(re.compile(r"_hidden_"))


def poll(page, check, what, timeout_s=UI_TIMEOUT_MS / 1000):
    """Calls ``check()`` until it returns a true value (returned) or fails."""
    deadline = time.time() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        page.wait_for_timeout(500)
