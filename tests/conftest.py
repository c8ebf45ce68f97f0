"""Test harness: a throwaway MongoDB and plugins directory for the whole session.

The environment is set before anything imports ``fiftyone``: the session starts
its own mongod in a temporary directory and points ``FIFTYONE_DATABASE_URI`` at
it, so the user's database (or a running App) is never touched. Engine tests never import FiftyOne.
"""

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_NAME = "@imgclust/clustering"

_SESSION_DIR = tempfile.mkdtemp(prefix="imgclust-tests-")
# atexit runs last-registered first: this runs after mongod has stopped
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
_PLUGINS_DIR = os.path.join(_SESSION_DIR, "plugins")
os.makedirs(os.path.join(_PLUGINS_DIR, "imgclust"))
os.symlink(REPO_ROOT, os.path.join(_PLUGINS_DIR, "imgclust", "clustering"))



def _start_mongod(db_dir):
    """Starts FiftyOne's bundled mongod on a free loopback port, private to this
    test session (so no other FiftyOne process on the machine, such as a
    running App, is ever attached to), and returns its URI."""
    spec = importlib.util.find_spec("fiftyone")
    mongod = os.path.join(os.path.dirname(spec.origin), "db", "bin", "mongod")
    if not os.access(mongod, os.X_OK):
        raise RuntimeError(f"FiftyOne's bundled mongod is missing ({mongod}); run `make venv`")
    os.makedirs(db_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [mongod, "--dbpath", db_dir, "--port", str(port), "--bind_ip", "127.0.0.1",
         "--nounixsocket", "--logpath", os.path.join(db_dir, "mongod.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(process.wait, 30)
    atexit.register(process.terminate)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"mongodb://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"mongod exited with {process.returncode}; see {db_dir}/mongod.log")
            time.sleep(0.2)
    raise RuntimeError("mongod did not start within 60 s")


os.environ["FIFTYONE_DATABASE_DIR"] = os.path.join(_SESSION_DIR, "db")
os.environ["FIFTYONE_DATABASE_URI"] = _start_mongod(os.environ["FIFTYONE_DATABASE_DIR"])
os.environ["FIFTYONE_PLUGINS_DIR"] = _PLUGINS_DIR
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
os.environ["FIFTYONE_DEFAULT_DATASET_DIR"] = os.path.join(_SESSION_DIR, "datasets")
os.environ.pop("OPENAI_API_KEY", None)

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)




@pytest.fixture(scope="session")
def session_dir():
    return _SESSION_DIR


@pytest.fixture(scope="session")
def fo():
    """The ``fiftyone`` module, connected to the throwaway database."""
    import fiftyone

    return fiftyone


@pytest.fixture(scope="session")
def plugin_operator(fo):
    """``plugin_operator("compute_clusters")`` -> the registered operator."""
    import fiftyone.operators as foo

    def get(name):
        return foo.get_operator(f"{PLUGIN_NAME}/{name}")

    return get


@pytest.fixture(scope="session")
def demo_images_dir(session_dir):
    """The demo PNGs (faces, non-faces, textures), written once per session."""
    from clustering.datasets import write_demo_images

    images_dir = os.path.join(session_dir, "demo-images")
    write_demo_images(images_dir)
    return images_dir


@pytest.fixture
def demo_dataset(fo, demo_images_dir, request):
    """A fresh non-persistent copy of the demo dataset (392 real images with
    ``ground_truth``), deleted after the test."""
    from clustering.datasets import load_demo_dataset

    name = "test-" + request.node.name[:60]
    dataset = load_demo_dataset(
        name, images_dir=demo_images_dir, persistent=False, overwrite=True
    )
    yield dataset
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def pixel_features(filepaths, size=16):
    """Real, cheap image features: the grayscale thumbnail's pixels (size*size-d)."""
    import numpy as np
    from PIL import Image

    return np.stack(
        [
            np.asarray(Image.open(p).convert("L").resize((size, size)), dtype=np.float32).ravel() / 255.0
            for p in filepaths
        ]
    )


@pytest.fixture
def pixel_dataset(demo_dataset):
    """The demo dataset with a ``pixels`` vector field (256-d thumbnails)."""
    ids, paths = demo_dataset.values(["id", "filepath"])
    X = pixel_features(paths)
    demo_dataset.set_values("pixels", dict(zip(ids, list(X))), key_field="id")
    return demo_dataset


@pytest.fixture(autouse=True)
def _isolated_model_registry():
    """Models a test registers do not leak into later tests (order-independent runs)."""
    import clustering.features.backbones as bb

    saved = dict(bb._REGISTRY)
    yield
    with bb._REGISTRY_LOCK:
        bb._REGISTRY.clear()
        bb._REGISTRY.update(saved)


@pytest.fixture
def tiny_model():
    """Name of a registered 3-d model (mean colour at 32 px): a second, cheap
    network; the registry is restored after the test."""
    import torch

    import clustering.features.backbones as bb

    name = "test-tiny"
    bb.register_model(
        name,
        lambda: torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1)),
        dim=3,
        image_size=32,
        overwrite=True,
    )
    return name


def form(name, dataset, params):
    """The plugin operator ``name``'s input form as the App resolves it (JSON
    properties), for ``dataset`` and the form values ``params``."""
    import asyncio

    from fiftyone.operators.executor import _parse_ctx, resolve_type
    from fiftyone.operators.registry import OperatorRegistry

    prop = asyncio.run(resolve_type(OperatorRegistry(), f"{PLUGIN_NAME}/{name}", _parse_ctx(dataset=dataset, params=params)))
    assert not hasattr(prop, "error"), getattr(prop, "error", None)
    return prop.to_json()["type"]["properties"]
