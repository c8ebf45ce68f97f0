"""Compiling the CPU kernels ahead of first use (``python -m clustering.warmup``),
and the progress message of a first use that compiles. Each check runs in a
fresh process with its own empty numba cache."""

import json
import os
import subprocess
import sys

import pytest

import clustering.runs._bson_kernels as B
import clustering.engine._kernels as K
from conftest import REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not K.NUMBA_ENABLED, reason="numba kernels disabled or numba missing"),
]

# fits in the shapes users run (small and large d, few and many clusters),
# then the cached kernels that numba had to compile in this process
_FIT_AND_COUNT_COMPILES = """
import json, sys
import numpy as np
from numba.core.registry import CPUDispatcher
import clustering.runs._bson_kernels as B
import clustering.engine._kernels as K
from clustering import GeneralizedKMeans

messages = []
rng = np.random.default_rng(1)
for n, d, k in [(3000, 16, 10), (3000, 300, 10), (6000, 64, 80), (500, 3, 2)]:
    X = rng.normal(size=(n, d)).astype(np.float32)
    km = GeneralizedKMeans(k, loss=sys.argv[1], n_init=2, max_iter=10, random_state=0, device="cpu")
    km.fit(X, progress=lambda f, m: messages.append(m)).predict(X[:50])
dispatchers = [v for v in vars(K).values() if isinstance(v, CPUDispatcher)]
dispatchers += [d for v in vars(K).values() if isinstance(v, dict) for d in v.values() if isinstance(d, CPUDispatcher)]
compiled = sorted(d.py_func.__name__ for d in dispatchers if d.stats.cache_misses)
print(json.dumps({"compiled": compiled, "messages": messages}))
"""


def _run(args, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _fit(loss, cache_dir):
    return json.loads(_run(["-c", _FIT_AND_COUNT_COMPILES, loss], cache_dir).splitlines()[-1])


@pytest.mark.parametrize("loss", ["squared", "huber"])
def test_warmup_compiles_everything_a_fit_needs(loss, tmp_path):
    _run(["-m", "clustering.warmup", "--loss", loss], tmp_path)
    after = _fit(loss, tmp_path)
    assert after["compiled"] == []
    assert not any("compiling" in m for m in after["messages"])


def test_first_use_compiles_and_says_so(tmp_path):
    first = _fit("squared", tmp_path)
    assert first["compiled"], "a cold cache compiles (else the check above proves nothing)"
    assert "compiling the squared kernels (first use only)" in first["messages"]
    again = _fit("squared", tmp_path)
    assert again["compiled"] == [] and not any("compiling" in m for m in again["messages"])


# reads of every kind of stored vector, then the reading kernels numba had to compile
_READ_AND_COUNT_COMPILES = """
import json
import numpy as np
import fiftyone as fo
from numba.core.registry import CPUDispatcher
import clustering.runs._bson_kernels as B
from clustering.runs import storage

ds = fo.Dataset()
ds.add_samples([fo.Sample(filepath=f"/x/{i}.jpg") for i in range(20)], progress=False)
ds.set_values("v", [np.ones(8, np.float32)] * 10 + [np.ones(8)] * 5 + [None] * 5)
ds.set_values("l", [[1.0] * 8] * 20)
storage.read_embeddings(ds, "v")
storage.read_embeddings(ds.limit(15), "l")
fo.delete_dataset(ds.name)
compiled = sorted(d.py_func.__name__ for d in vars(B).values() if isinstance(d, CPUDispatcher) and d.stats.cache_misses)
print(json.dumps(compiled))
"""


@pytest.mark.skipif(not B.AVAILABLE, reason="no reading kernels here (numba or the inflate libraries missing)")
def test_warmup_compiles_the_reading_kernels(tmp_path):
    assert json.loads(_run(["-c", _READ_AND_COUNT_COMPILES], tmp_path / "cold").splitlines()[-1])
    _run(["-m", "clustering.warmup", "--loss", "squared"], tmp_path / "warm")
    assert json.loads(_run(["-c", _READ_AND_COUNT_COMPILES], tmp_path / "warm").splitlines()[-1]) == []
