"""Compiling the engine's CPU kernels (and the kernels that decode embeddings
read from the database) ahead of first use.

numba compiles the kernels a loss needs the first time a process fits with it
(a few seconds for squared L2, 12-13 s for absolute, Huber or pseudo-Huber)
and caches them on disk (``clustering/__pycache__``, or numba's user cache
directory when that is read-only); later processes load them in under a
second. ``python -m clustering.warmup`` compiles every loss's float32 kernels
once, at install time (``make venv`` and ``make install-plugin`` run it).

Within a process, :func:`ensure_ready` runs a tiny fit of the loss first, on
the same code paths as the real one (which loads or compiles its kernels), and
reports "compiling the huber kernels (first use only)" unless a stamp beside
numba's cache says that this loss's kernels were already compiled there for
this source, numba version and CPU.
"""

import hashlib
import os
import threading

import numpy as np

from . import _kernels as K
from .losses import available_losses, get_loss

# the engine's regimes that use different kernels: d up to _LANES_MAX_D puts
# samples on the vector lanes; euclidean pruning starts at 64 clusters
_SMALL_D, _LARGE_D = 8, K._LANES_MAX_D + 8
_FEW_CLUSTERS, _MANY_CLUSTERS = 3, 64

_started = set()  # (loss, dtype) warmed or being warmed in this process
_lock = threading.RLock()  # re-entered by the warm-up's own fits


def _tiny_fits(loss, dtype):
    """The (n, d, k) problems whose fits compile every kernel ``loss`` uses."""
    ks = [_FEW_CLUSTERS]
    if get_loss(loss).geometry in ("euclidean", "cosine"):
        ks.append(_MANY_CLUSTERS)
    return [(4 * _MANY_CLUSTERS, d, k) for d in (_SMALL_D, _LARGE_D) for k in ks]


def _warm(loss, dtype):
    from .kmeans import GeneralizedKMeans

    rng = np.random.default_rng(0)
    for n, d, k in _tiny_fits(loss, dtype):
        X = rng.normal(size=(n, d)).astype(dtype)
        X[: n // 2] += 3.0
        km = GeneralizedKMeans(k, loss=loss, n_init=1, max_iter=3, device="cpu", random_state=0,
                               dtype=dtype).fit(X)
        km.predict(X[:8])
        km.transform(X[:8])


def _stamp_path(loss, dtype):
    """Path of the stamp that says ``loss``'s ``dtype`` kernels are in numba's
    disk cache (None where the cache's location is unknown)."""
    from numba.core.registry import CPUDispatcher

    paths = (getattr(v._cache, "_cache_path", None) for v in vars(K).values() if isinstance(v, CPUDispatcher))
    cache_dir = next((p for p in paths if p), None)
    if not cache_dir:
        return None
    import llvmlite.binding as ll
    import numba

    source = os.stat(K.__file__)  # numba's own cache key uses the source's stamp too
    key = "|".join(map(str, (
        numba.__version__, ll.get_host_cpu_name(), os.environ.get("NUMBA_CPU_NAME", ""),
        source.st_mtime_ns, source.st_size, loss, dtype,
    )))
    return os.path.join(cache_dir, f"imgclust-ready-{hashlib.sha1(key.encode()).hexdigest()[:20]}")


def ensure_ready(loss, dtype="float32", progress=None):
    """Compiles (or loads from the disk cache) the CPU kernels of the
    registered loss ``loss`` (a name) in ``dtype``, once per process.
    ``progress(message)`` hears "compiling the <loss> kernels (first use
    only)" when they are not known to be compiled already."""
    key = (loss, np.dtype(dtype).name)
    if not K.NUMBA_ENABLED or key in _started or loss not in available_losses():
        return
    with _lock:
        if key in _started:  # warmed meanwhile, or this is the warm-up's own fit
            return
        _started.add(key)
        stamp = _stamp_path(*key)
        if progress is not None and not (stamp and os.path.exists(stamp)):
            progress(f"compiling the {loss.replace('_', '-')} kernels (first use only)")
        try:
            _warm(*key)
        except BaseException:
            _started.discard(key)
            raise
        if stamp:
            try:
                with open(stamp, "w"):
                    pass
            except OSError:  # a read-only cache: the message shows again, nothing else
                pass


def compile_all(losses=None, dtypes=("float32",), progress=None):
    """Compiles every loss's kernels (``losses``: names, default all) and those
    that decode embeddings read from the database."""
    from . import _bson_kernels

    todo = [(loss, dtype) for loss in (losses or available_losses()) for dtype in dtypes]
    for i, (loss, dtype) in enumerate(todo):
        if progress is not None:
            progress(i / (len(todo) + 1), f"{loss} ({dtype})")
        ensure_ready(loss, dtype)
    if progress is not None:
        progress(len(todo) / (len(todo) + 1), "embeddings decoding")
    _bson_kernels.warm_up()
    if progress is not None:
        progress(1.0, "done")


def main(argv=None):
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Compile the clustering engine's CPU kernels (numba) ahead of first use.")
    parser.add_argument("--loss", action="append", help="only this loss (repeatable); default: every loss")
    parser.add_argument("--float64", action="store_true", help="also the float64 kernels")
    args = parser.parse_args(argv)
    if not K.NUMBA_ENABLED:
        print("numba is not available (or CLUSTERING_DISABLE_NUMBA is set): nothing to compile")
        return
    dtypes = ("float32", "float64") if args.float64 else ("float32",)
    start = time.perf_counter()
    compile_all(args.loss, dtypes, progress=lambda f, m: print(f"[{100 * f:3.0f}%] {m}", flush=True))
    print(f"kernels ready in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
