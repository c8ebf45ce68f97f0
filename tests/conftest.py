"""Test harness: a throwaway MongoDB and plugins directory for the whole session.

The environment is set before anything imports ``fiftyone``, so the user's
``~/.fiftyone`` database is never touched. Engine tests never import FiftyOne.
"""

import os
import shutil
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_NAME = "@imgclust/clustering"

_SESSION_DIR = tempfile.mkdtemp(prefix="imgclust-tests-")
_PLUGINS_DIR = os.path.join(_SESSION_DIR, "plugins")
os.makedirs(os.path.join(_PLUGINS_DIR, "imgclust"))
os.symlink(REPO_ROOT, os.path.join(_PLUGINS_DIR, "imgclust", "clustering"))

os.environ.pop("FIFTYONE_DATABASE_URI", None)
os.environ["FIFTYONE_DATABASE_DIR"] = os.path.join(_SESSION_DIR, "db")
os.environ["FIFTYONE_PLUGINS_DIR"] = _PLUGINS_DIR
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
os.environ["FIFTYONE_DEFAULT_DATASET_DIR"] = os.path.join(_SESSION_DIR, "datasets")
os.environ.pop("OPENAI_API_KEY", None)

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def pytest_sessionfinish(session, exitstatus):
    if "fiftyone" in sys.modules:
        try:
            import fiftyone.core.odm.database as food

            food._disconnect()
        except Exception:
            pass
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


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
