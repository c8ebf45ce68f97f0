"""Whether a loss's CPU kernels are compiled: once per process, and a stamp
beside numba's disk cache that says so for later processes.

numba compiles the kernels a loss needs the first time a process fits with it
(a few seconds for squared L2, 12-13 s for absolute, Huber or pseudo-Huber)
and caches them on disk (``clustering/engine/__pycache__``, or numba's user
cache directory when that is read-only); later processes load them in under a
second. :func:`ensure_ready` runs the engine's own warm-up fits once per
process (given by the caller, :func:`clustering.engine.kmeans.compile_kernels`)
and reports "compiling the huber kernels (first use only)" unless a stamp says
that this loss's kernels were already compiled there for this source, numba
version and CPU.
"""

import hashlib
import os
import threading

import numpy as np

from . import _kernels as K
from .losses import available_losses

_started = set()  # (loss, dtype) warmed or being warmed in this process
_lock = threading.RLock()  # re-entered by the warm-up's own fits


def stamp_path(loss, dtype):
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


def ensure_ready(loss, dtype, warm, progress=None):
    """Compiles (or loads from the disk cache) the CPU kernels of the
    registered loss ``loss`` (a name) in ``dtype``, once per process, by
    calling ``warm(loss, dtype)`` (fits that run every kernel the loss uses).
    ``progress(message)`` hears "compiling the <loss> kernels (first use
    only)" when they are not known to be compiled already."""
    key = (loss, np.dtype(dtype).name)
    if not K.NUMBA_ENABLED or key in _started or loss not in available_losses():
        return
    with _lock:
        if key in _started:  # warmed meanwhile, or this is the warm-up's own fit
            return
        _started.add(key)
        stamp = stamp_path(*key)
        if progress is not None and not (stamp and os.path.exists(stamp)):
            progress(f"compiling the {loss.replace('_', '-')} kernels (first use only)")
        try:
            warm(*key)
        except BaseException:
            _started.discard(key)
            raise
        if stamp:
            try:
                with open(stamp, "w"):
                    pass
            except OSError:  # a read-only cache: the message shows again, nothing else
                pass
